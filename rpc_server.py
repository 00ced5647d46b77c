"""GPU host: serve `RemoteWorker` over torch RPC as GPU_WORKER until the client shuts down.

    python rpc_server.py --host 10.0.0.2 [--port 29500] [--channel basic] [--device cuda]

--host is this host's address on the link to the client; the worker listens there only.
torch RPC unpickles what it receives: run this on a trusted network only.
"""
from __future__ import annotations

import argparse
import os
import sys
import threading

from harness.compute import hostmem
from harness.compute.worker import RemoteWorker  # noqa: F401  (the class the client instantiates here)
from harness.errors import UsageError
from harness.testbed import rpc
from harness.testbed.launcher import READY


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", required=True, help="this host's address on the link")
    p.add_argument("--port", type=int, default=29500)
    p.add_argument("--channel", default=rpc.DEFAULT_CHANNEL, choices=rpc.CHANNELS)
    p.add_argument("--device", help="torch device for the worker (default: cuda if present)")
    p.add_argument("--malloc", choices=("keep", "system"), default="keep",
                   help="keep: freed host memory stays in the process, so each call's receive buffers "
                        "reuse pages instead of faulting fresh ones (harness/compute/hostmem.py); system: glibc's default")
    p.add_argument("--clients", type=int,
                   help="serve this many client processes, which share the worker (harness.serve), until "
                        "stdin closes; default: the one client of the suite's cells, until it shuts down")
    p.add_argument("--lifeline", action="store_true",
                   help="exit when stdin closes: the launcher (or its ssh session) is gone")
    return p.parse_args(argv)


def hold_lifeline() -> None:
    """The launcher keeps our stdin open while it lives. EOF means it died, or the ssh session
    carrying us was torn down (a cut link, a killed client): nobody will call shutdown, so go.

    Nothing may stop the exit: a launcher that died took the reader of our stdout with it, and
    a print() there raised BrokenPipeError and killed this thread before os._exit, leaving the
    worker (and its GPU memory) behind. So the goodbye is best effort and os._exit is in a
    finally. os._exit ends the process whatever the main thread is doing (waiting in
    rpc.shutdown() for a client that will never come)."""
    def watch():
        try:
            while os.read(0, 65536):  # raw fd: no decoding to fail; EOF, or EIO from a hung-up tty
                pass
        finally:
            _say_best_effort("rpc_server: launcher gone (stdin closed), exiting\n")
            os._exit(3)
    threading.Thread(target=watch, daemon=True).start()


def _say_best_effort(text: str) -> None:
    """To stderr, never raising or blocking: its reader may be dead (EPIPE on a pipe, EIO on a
    terminal) or alive but not reading (a full pipe would block us)."""
    try:
        os.set_blocking(2, False)
        os.write(2, text.encode())
    except OSError:
        pass


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        cfg = rpc.RpcConfig(args.host, args.port, args.channel)
        iface = rpc.iface_of_address(args.host)
        rpc.check_port_free(args.host, args.port)
    except UsageError as e:
        print(f"rpc_server: error: {e}", file=sys.stderr, flush=True)
        return 2
    if args.clients is not None and args.clients < 1:
        print(f"rpc_server: error: --clients {args.clients} must be >= 1", file=sys.stderr, flush=True)
        return 2
    if args.device:
        os.environ["SGAP_DEVICE"] = args.device
    if args.malloc == "keep":
        hostmem.keep_freed_memory()
    if args.lifeline:
        hold_lifeline()
    print(f"{READY} on {args.host}:{args.port} ({iface}, uv/{args.channel}, malloc {hostmem.POLICY}) "
          f"pid {os.getpid()}", flush=True)
    from torch.distributed import rpc as torch_rpc
    rpc.init(cfg, rpc.WORKER_NAME, rank=0, iface=iface, world_size=(args.clients or 1) + 1)
    if args.clients is not None:
        # many clients leave one by one (or are killed): no graceful shutdown can gather them all,
        # so serve until the launcher cuts the lifeline (--lifeline exits then)
        threading.Event().wait()
    torch_rpc.shutdown()  # serves until the client, too, calls shutdown
    print("rpc_server: client finished, exiting", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
