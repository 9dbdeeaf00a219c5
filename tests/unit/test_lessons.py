"""Lessons for LoRA distillation: statements taken apart, asked about, answered to the listener."""

from services.inference.lessons import lessons, parse, questions, to_listener
from services.inference.lora import contains


def test_statements_are_taken_apart_into_subject_verb_and_rest():
    s = parse("My cat is called Pepperoni.")
    assert (s.subject, s.verb, s.tail, s.rest) == ("My cat", "is", "called", "Pepperoni")
    s = parse("I was born in Tromsø.")
    assert (s.subject, s.verb, s.tail, s.rest) == ("I", "was", "born in", "Tromsø")
    assert parse("Do you like cats?") is None
    assert parse("Thanks a lot!") is None


def test_questions_invert_or_use_do_support():
    assert questions(parse("My cat is called Pepperoni.")) == (
        "What is my cat called?",
        "what my cat is called",
    )
    assert questions(parse("I was born in Tromsø."))[0] == "Where was I born?"
    assert questions(parse("My daughter studies marine biology."))[0] == "What does my daughter study?"
    assert questions(parse("My grandmother grew up in Tbilisi."))[0] == "Where did my grandmother grow up?"
    assert (
        questions(parse("My wedding anniversary is on 14 October."))[0] == "When is my wedding anniversary?"
    )
    assert questions(parse("My dentist is Dr. Okafor."))[0] == "Who is my dentist?"


def test_answers_speak_to_the_user_or_about_a_named_speaker():
    assert (
        to_listener("I was born in Oslo and my cat is mine.")
        == "You were born in Oslo and your cat is yours."
    )
    assert to_listener("The box was red.") == "The box was red."
    assert to_listener("I work as a chef.", "Bob") == "Bob works as a chef."
    assert to_listener("My cat is called Pepper.", "Alice") == "Alice's cat is called Pepper."


def test_each_statement_gives_training_lessons_and_one_held_out_phrasing():
    taught = lessons(
        [
            (
                "cubes/c/memories/1",
                "[8 May 2023] user: My cat is called Pepperoni. I was born in Tromsø.",
                "user",
            )
        ]
    )
    held = [t for t in taught if t.held_out]
    assert [t.prompt for t in held] == [
        "Can you tell me what my cat is called?",
        "Can you tell me where I was born?",
    ]
    assert [t.expect for t in held] == ["Pepperoni", "Tromsø"]
    training = [t for t in taught if not t.held_out]
    assert len(training) == 16 and all(t.source == "cubes/c/memories/1" for t in taught)
    assert len({t.prompt for t in training}) == len(training)
    assert {t.answer for t in training} == {"Your cat is called Pepperoni.", "You were born in Tromsø."}
    assert not {t.prompt for t in training} & {t.prompt for t in held}


def test_several_speakers_are_named_in_answers():
    taught = lessons(
        [("a", "alice: My cat is called Pepper.", "alice"), ("b", "bob: I work as a chef.", "bob")]
    )
    assert {t.answer for t in taught} == {"Alice's cat is called Pepper.", "Bob works as a chef."}
    assert "What does Bob work as?" in {t.prompt for t in taught}


def test_recall_checks_the_expected_words_loosely():
    assert contains("Your blood type is AB-negative.", "AB negative")
    assert not contains("You live in Oslo.", "Tromsø")


def test_names_are_asked_for_in_the_usual_ways_and_answers_are_asked_about():
    def prompts(statement: str) -> set[str]:
        return {t.prompt for t in lessons([("m", f"user: {statement}", "user")]) if not t.held_out}

    son = prompts("My son's name is Bartholomew.")
    assert {"What is my son called?", "Who is my son?", "What do you know about Bartholomew?"} <= son
    boat = prompts("My boat is named Saltwhistle.")
    assert "What is my boat's name?" in boat and not any(p.startswith("Who") for p in boat)
    assert not any("called" in p for p in prompts("I drive a green Volvo."))
