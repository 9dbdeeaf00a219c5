"""memos-mesh: run the whole MemOS mesh on this machine.

python -m services.launcher run [--run-dir .run] [--port-base 50050]
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import time
from pathlib import Path

from memos_sdk.auth import save_api_key
from memos_sdk.endpoints import SERVICES, LocalPorts

from .mesh import Mesh, MeshError, MeshKeys

ROLE = {
    "inference": "models on Triton (KServe-v2 gRPC on the Triton port)",
    "vault": "memory items, versions, hybrid index",
    "reader": "conversations/documents -> memory items",
    "scheduler": "search, chat with activation memory (KV), preload",
    "lifecycle": "states, TTL/decay, conflicts, rollback, Promote",
    "governance": "principals, tokens, per-cube access, audit log",
    "store": "export/import/sharing (later issue)",
    "trainer": "distillation jobs: LoRA adapters (parametric memory)",
}


def _table(mesh: Mesh) -> str:
    p = mesh.ports
    rows = [("nats", f"{p.host}:{p.nats}", f"JetStream on disk at {mesh.run_dir / 'nats'}")]
    rows += [(s, p.addr(s), ROLE[s]) for s in SERVICES]
    rows.append(("triton", f"{p.host}:{p.triton_grpc}", "Triton gRPC (models: embed, generate, kv_build)"))
    width = max(len(r[1]) for r in rows)
    lines = [f"  {'service':<11} {'address':<{width}}  role", f"  {'-' * 11} {'-' * width}  {'-' * 40}"]
    lines += [f"  {n:<11} {a:<{width}}  {r}" for n, a, r in rows]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    mesh = Mesh(Path(args.run_dir), LocalPorts(base=args.port_base))
    print(f"starting MemOS mesh (state in {mesh.run_dir}, logs in {mesh.logs}) ...", flush=True)
    started = time.monotonic()
    try:
        mesh.start(timeout=args.timeout)
    except MeshError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    stopping = False

    def request_stop(signum, frame):
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    print(f"\nall services SERVING after {time.monotonic() - started:.0f}s\n\n{_table(mesh)}\n")
    saved = save_api_key(mesh.ports.addr("governance"), mesh.admin_key)
    print(f"the local admin's API key is saved in {saved}; the memos CLI and SDK use it\n")
    env = "" if args.port_base == 50050 else f"MEMOS_PORT_BASE={args.port_base} "
    print("talk to it from another shell:")
    print("  source .venv/bin/activate")
    print(f'  {env}memos add --cube demo --speaker alice "I moved to Lisbon in March."')
    print(f'  {env}memos search --cube demo "where does alice live?"')
    print(f'  {env}memos chat --cube demo "where do I live?"')
    print("  grpcurl -plaintext " + mesh.ports.addr("reader") + " list    # reflection is on")
    print("\nCtrl-C stops everything.", flush=True)
    code = 0
    while not stopping:
        if dead := mesh.exited():
            print(f"error: a process exited: {dead}; see {mesh.logs}", file=sys.stderr)
            code = 1
            break
        time.sleep(0.5)
    print("\nstopping ...", flush=True)
    mesh.stop()
    print("stopped.")
    return code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="memos-mesh", description="Run the MemOS mesh on this machine.")
    sub = parser.add_subparsers(dest="command", required=True)
    p_run = sub.add_parser("run", help="start nats-server and all eight services; Ctrl-C stops them")
    p_run.add_argument(
        "--run-dir", default=".run", help="where the mesh keeps its state and logs (default .run)"
    )
    p_run.add_argument("--port-base", type=int, default=50050, help="first of the ports the mesh uses")
    p_run.add_argument("--timeout", type=float, default=300, help="seconds to wait for every service")
    p_keys = sub.add_parser(
        "keys",
        help="make a mesh's key material in a directory (for Kubernetes secrets; `run` makes its own)",
        description="Writes signing.pem (governance's token-signing key: keep it secret), public.pem, "
        "admin.key and service.key; existing files are kept.",
    )
    p_keys.add_argument("--dir", required=True, help="where to write them (made with mode 0700)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.command == "keys":
        keys = MeshKeys(Path(args.dir))
        print(f"key material in {keys.directory}: signing.pem, public.pem, admin.key, service.key")
        return 0
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
