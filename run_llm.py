"""Client: one phase of LLM inference in one mode; prints one JSON line.

    python run_llm.py --mode {local,naive,sys_simulated} --phase {prefill,decode}
                      [--gpu_host_ip ADDR] [--gap-model tiny] [--gap-prompt-len 128] [--gap-steps 50]

Without --gpu_host_ip the GPU host is emulated on this machine (network namespace + veth) and
its worker started and stopped here. With it, rpc_server.py must already run on that host.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from dataclasses import asdict

from harness.errors import UsageError

PROG = "run_llm"


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, not argparse's usage block
        raise UsageError(f"{message} (see python {PROG}.py --help)")


# the suite's settings this script takes, named as the suite names them (--gap-<field>), but for the
# three the original plan names: --mode, --phase and --gpu_host_ip (harness.options.SuiteOptions)
SETTINGS = ("model", "dtype", "device", "engine", "threads", "batch", "seed", "prompt_len", "steps", "gpu_addr",
            "port", "channel", "link_gbps")


def parse_args(argv):
    from harness.compute.modes import MODES, LocalBackend
    from harness.compute.phase import PHASES
    from harness.options import GROUPS, add_options
    p = _Parser(prog=PROG, description=__doc__.splitlines()[0])
    p.add_argument("--mode", required=True, choices=list(MODES))
    p.add_argument("--phase", required=True, choices=PHASES)
    groups = {}
    add_options(lambda key: groups.setdefault(key, p.add_argument_group(GROUPS[key])), SETTINGS, plan=True)
    return p.parse_args(argv)


def build_request(args):
    """The suite's options and checks (harness.options), for this one phase."""
    from harness.options import SuiteOptions, values_of
    return SuiteOptions(**values_of(args, SETTINGS), plan_flags=True).validate(phases=(args.phase,))


def run(args) -> dict:
    from harness.compute import hostmem
    from harness.compute import threads as host_threads
    from harness.compute.models import build_model, load_config, prompt_ids
    from harness.compute.modes import MODES, LocalBackend
    from harness.compute.phase import run_phase
    from harness.testbed.bed import testbed

    opts = build_request(args)
    host_threads.apply(opts.threads, opts.resolved_device)  # this process's, whichever mode runs
    hostmem.keep_freed_memory()                             # as the worker's (rpc_server.py --malloc)
    spec = opts.spec
    prompt = prompt_ids(load_config(spec), opts.prompt_len, opts.seed, opts.batch)
    if not MODES[args.mode].remote:
        backend = LocalBackend(build_model(spec, opts.resolved_device), opts.engine_spec)  # here: run it on the GPU host
        result = run_phase(backend, prompt, args.phase, opts.steps)
        return summary(args, opts, opts.resolved_device, "none (local)", result, None, None)
    state_dict = build_model(spec, "cpu").state_dict()  # the client's copy of the weights
    with testbed(opts.gpu_addr, opts.port, opts.channel, opts.device, link_gbps=opts.link_gbps) as bed:
        backend = bed.backend(args.mode, spec, state_dict, opts.engine_spec)
        c1 = bed.counters()
        result = run_phase(backend, prompt, args.phase, opts.steps)
        c2 = bed.counters()
        remote_device = bed.worker(spec, opts.engine_spec).rpc_sync().stats_remote()["device"]
        return summary(args, opts, remote_device, bed.link.label, result, backend.load,
                       {"tx_bytes": c2[0] - c1[0], "rx_bytes": c2[1] - c1[1]})


def summary(args, opts, device, link, result, load, link_bytes) -> dict:
    """load: sys_simulated's one-time weight load (its link bytes inside), recorded as the suite does."""
    out = {"mode": args.mode, "phase": args.phase, "model": opts.spec.name, "dtype": opts.spec.dtype,
           "engine": opts.engine_spec.name,
           "device": device, "link": link, "prompt_len": opts.prompt_len,
           "steps": opts.steps if args.phase == "decode" else 0}
    out |= result.to_dict()
    out["weight_load"] = None if load is None else asdict(load)
    out["link_bytes"] = link_bytes
    return out


STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
GRACE_S = 3.0  # after a stop signal, how long the main thread has to start unwinding
_unwinding = threading.Event()  # a stop signal's Python handler has run


def _sigterm(signum, frame):
    """SIGTERM and SIGINT: unwind through every finally, so nothing is left running. Once: a
    repeat (timeout(1) signals its child, then the child's process group) must not cut the
    cleanup short."""
    if _unwinding.is_set():
        return
    _unwinding.set()
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise SystemExit(128 + signum)


def _watch_for_stuck_main() -> None:
    """A Python signal handler runs only when the main thread is back in Python code. Blocked in
    C++ it never is: torch RPC's rendezvous with a GPU host that accepts the connection and never
    answers waits for many minutes. The C-level handler still writes the signal's number to the
    wakeup fd at once, so this thread hears of it, and if _sigterm has not run GRACE_S later it
    cleans up what the main thread can no longer reach and exits."""
    r, w = os.pipe()
    os.set_blocking(w, False)  # set_wakeup_fd requires it: the C handler must never block
    signal.set_wakeup_fd(w, warn_on_full_buffer=False)

    def watch():
        while True:
            signum = os.read(r, 1)[0]
            if signum in STOP_SIGNALS and not _unwinding.wait(GRACE_S):
                _remove_own_namespace()
                try:
                    os.write(2, f"{PROG}: {signal.Signals(signum).name} while blocked in torch RPC; "
                                "cleaned up, exiting\n".encode())
                finally:
                    os._exit(128 + signum)
    threading.Thread(target=watch, name="stop-signal-watch", daemon=True).start()


def _remove_own_namespace() -> None:
    """The emulated GPU host's namespace, and the worker in it. A worker on a real host ends by
    itself once our exit closes its lifeline (its stdin, or the ssh session)."""
    try:
        from harness.testbed import netns
        name, veth, _ = netns.link_names(os.getpid(), 0)  # the names create() gives our link
        netns.destroy_names(name, veth)  # idempotent: a namespace never made is skipped
    except Exception:  # no root, no `ip`: nothing of ours to remove, and we are leaving anyway
        pass


def main(argv=None) -> int:
    for sig in STOP_SIGNALS:
        signal.signal(sig, _sigterm)
    _watch_for_stuck_main()
    try:
        args = parse_args(argv)
        print(json.dumps(run(args)), flush=True)
    except UsageError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; cleaned up", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
