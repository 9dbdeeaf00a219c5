"""MemTrainer: runs distillation jobs from the MEMOS_JOBS work queue (parametric memory)."""
