"""Client: one phase of LLM inference in one mode; prints one JSON line.

    python run_llm.py --mode {local,naive,sys_simulated} --phase {prefill,decode}
                      [--gpu_host_ip ADDR] [--model tiny] [--prompt-len 128] [--decode-steps 50]

Without --gpu_host_ip the GPU host is emulated on this machine (network namespace + veth) and
its worker started and stopped here. With it, rpc_server.py must already run on that host.
"""
from __future__ import annotations

import argparse
import json
import signal
import sys

from harness.errors import UsageError

PROG = "run_llm"


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, not argparse's usage block
        raise UsageError(f"{message} (see python {PROG}.py --help)")


def parse_args(argv):
    from harness.compute.modes import MODES
    from harness.compute.phase import PHASES
    from harness.testbed.rpc import CHANNELS, DEFAULT_CHANNEL
    p = _Parser(prog=PROG, description=__doc__.splitlines()[0])
    p.add_argument("--mode", required=True, choices=MODES)
    p.add_argument("--phase", required=True, choices=PHASES)
    p.add_argument("--gpu_host_ip", help="the GPU host's link address (default: emulate it here)")
    p.add_argument("--port", type=int, default=29500)
    p.add_argument("--model", default="tiny", help="preset name or local model directory")
    p.add_argument("--prompt-len", type=int, default=128)
    p.add_argument("--decode-steps", type=int, default=50)
    p.add_argument("--dtype", default="auto", help="fp32 | fp16 | bf16 | auto (fp16 on CUDA)")
    p.add_argument("--device", help="where the model runs (default: cuda if present, else cpu)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--channel", default=DEFAULT_CHANNEL, choices=CHANNELS)
    p.add_argument("--link-gbps", type=float, help="emulated link only: its line rate each way "
                   "(tc tbf) [unshaped]")
    return p.parse_args(argv)


def build_request(args):
    """Validate everything that can be checked before anything starts."""
    from harness.compute.models import ModelSpec, default_device, load_config, max_positions
    device = args.device or default_device()
    dtype = args.dtype if args.dtype != "auto" else ("fp16" if device.startswith("cuda") else "fp32")
    spec = ModelSpec(args.model, dtype, args.seed)
    if args.prompt_len <= 0:
        raise UsageError(f"--prompt-len {args.prompt_len} must be > 0")
    if args.decode_steps <= 0:
        raise UsageError(f"--decode-steps {args.decode_steps} must be > 0")
    if args.link_gbps is not None and (args.link_gbps <= 0 or args.gpu_host_ip):
        raise UsageError(f"--link-gbps {args.link_gbps}: give a rate > 0, and only for the emulated "
                         "link (a real link to --gpu_host_ip has its own rate)")
    config = load_config(spec)
    needed = args.prompt_len + (args.decode_steps + 1 if args.phase == "decode" else 0)
    if needed > max_positions(config):
        raise UsageError(f"prompt of {args.prompt_len} + {needed - args.prompt_len} generated tokens "
                         f"exceeds {args.model}'s context of {max_positions(config)}: lower "
                         "--prompt-len or --decode-steps")
    return spec, config, device


def run(args) -> dict:
    from harness.compute.models import build_model, prompt_ids
    from harness.compute.modes import LocalBackend, NaiveBackend, SysBackend
    from harness.compute.phase import run_phase
    from harness.testbed.bed import testbed

    spec, config, device = build_request(args)
    prompt = prompt_ids(config, args.prompt_len, args.seed)
    steps = args.decode_steps
    if args.mode == "local":
        backend = LocalBackend(build_model(spec, device))
        result = run_phase(backend, prompt, args.phase, steps)
        return summary(args, spec, device, "none (local)", result, None, None)
    state_dict = build_model(spec, "cpu").state_dict()  # the client's copy of the weights
    with testbed(args.gpu_host_ip, args.port, args.channel, args.device, link_gbps=args.link_gbps) as bed:
        worker = bed.worker(spec)
        c0 = bed.counters()
        backend = (NaiveBackend if args.mode == "naive" else SysBackend)(worker, state_dict)
        c1 = bed.counters()
        result = run_phase(backend, prompt, args.phase, steps)
        c2 = bed.counters()
        load = getattr(backend, "load", None)
        remote_device = worker.rpc_sync().stats_remote()["device"]
        return summary(args, spec, remote_device, bed.link.label, result, load,
                       {"tx_bytes": c2[0] - c1[0], "rx_bytes": c2[1] - c1[1],
                        "load_tx_bytes": c1[0] - c0[0], "load_rx_bytes": c1[1] - c0[1]})


def summary(args, spec, device, link, result, load, link_bytes) -> dict:
    out = {"mode": args.mode, "phase": args.phase, "model": spec.name, "dtype": spec.dtype,
           "device": device, "link": link, "prompt_len": args.prompt_len,
           "decode_steps": args.decode_steps if args.phase == "decode" else 0}
    out |= result.to_dict()
    out["weight_load"] = None if load is None else {
        "latency_s": load.latency_s, "payload_tx_bytes": load.payload_tx_bytes, "server_s": load.server_s}
    out["link_bytes"] = link_bytes
    return out


def _sigterm(signum, frame):
    raise SystemExit(128 + signum)  # unwinds through every finally: nothing is left running


def main(argv=None) -> int:
    signal.signal(signal.SIGTERM, _sigterm)
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
