"""The suite's options, read once into one typed object and validated before anything starts."""
from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace

from harness.compute.engine import AUTO, GRAPHS, EngineSpec
from harness.compute.models import ModelSpec, default_device, load_config, max_positions
from harness.compute.modes import MODES
from harness.compute.phase import PHASES
from harness.errors import UsageError
from harness.testbed.hosts import GpuHost, SshTarget
from harness.testbed.launcher import REPO
from harness.testbed.link import PROFILES
from harness.testbed.rpc import CHANNELS, DEFAULT_CHANNEL

GATE_METRICS = ("bytes", "gpu")


GROUPS = {  # the options' groups, as pytest-benchmark groups its own: key -> title
    "model": "semantic gap: the model and how it runs",
    "measurement": "semantic gap: what each cell measures",
    "link": "semantic gap: the link and the two hosts",
    "output": "semantic gap: verdicts and baselines",
    "clients": "semantic gap: many clients sharing one worker (benchmarks/test_clients.py)",
}


@dataclass(frozen=True)
class Opt:
    """How a setting is given on a command line: its help ({default} is filled in), its group,
    and where its flag is not --gap-<field> (an _s suffix dropped, _ as -)."""
    help: str
    group: str
    type: type | None = None
    metavar: str | None = None
    action: str | None = None     # store_true | store_false (then the flag names the switch)
    flag: str | None = None
    plan: str | None = None       # the original plan's name for it, which run_llm.py keeps


def opt(default, help: str, group: str, **kw):
    return field(default=default, metadata={"opt": Opt(help, group, **kw)})


@dataclass(frozen=True)
class SuiteOptions:
    """Every setting of a run, one name each from the flag (--gap-<name>) to the JSON: declared
    here once, with what fixtures/options.py, run_llm.py and harness.sweep make of them."""
    model: str = opt("tiny", "preset (tiny, tiny-llama, gpt2, gpt2-medium, llama-1b, llama-8b) or a local "
                     "Hugging Face model directory [{default}]", "model")
    dtype: str = opt("auto", "fp32 | fp16 | bf16 | auto: bf16 on CUDA, else fp32 [{default}]", "model")
    device: str | None = opt(None, "torch device of the model [cuda if present]", "model")
    engine: str | None = opt(None, "how every mode runs the model: eager (transformers, a launch per kernel), "
                             "static (its static cache, eager), graphs (each decode step one CUDA graph), "
                             "graphs-all (and each prompt one graph), compact (compact Llama/GPT-2 code, "
                             "compiled and captured on CUDA, eager elsewhere) [compact on CUDA (graphs-all for "
                             "other families), else eager]", "model")
    threads: int | None = opt(None, "host threads torch gives the model's CPU work, in the client and the worker "
                              "(harness/compute/threads.py) [1 on CUDA, else one per core]", "model", type=int)
    batch: int = opt(1, "sequences decoded together, as a serving system batches [{default}]", "model", type=int)
    seed: int = opt(0, "weights and prompt seed [{default}]", "model", type=int)
    prompt_len: int = opt(128, "prompt tokens [{default}]", "measurement", type=int)
    steps: int = opt(50, "decode steps after prefill [{default}]", "measurement", type=int)
    rounds: int = opt(3, "measured rounds per cell [{default}]", "measurement", type=int)
    rounds_stateful: int | None = opt(None, "measured rounds of the local and sys_simulated cells, which take "
                                      "milliseconds where naive's take seconds [--gap-rounds]", "measurement",
                                      type=int, metavar="N")
    warmup: int = opt(1, "warm-up rounds per cell; the stateful cells and naive prefill take at least 2 "
                      "(harness/cell.py says why) [{default}]", "measurement", type=int)
    sessions: int = opt(1, "sessions each cell runs in, one after another, each a fresh worker process and client "
                        "(a pytest run of its own): the table gives the spread of their means beside each "
                        "round's spread within one [{default}]", "measurement", type=int, metavar="N")
    util_samples: int = opt(5, "dmon samples (1 s each) a cell's utilization window runs its phase back to back "
                            "for, where a round holds fewer; 0: no window [{default}]", "measurement", type=int)
    capture: bool = opt(True, "no tcpdump around rounds", "measurement", action="store_false",
                        flag="--gap-no-capture")
    rpc_timeout_s: float = opt(30.0, "seconds one RPC may take before the cell fails (a dead link or worker) "
                               "[{default:g}]", "measurement", type=float)
    gpu_host: str | None = opt(None, "a real GPU host, driven over ssh: the worker, dmon and iperf3 start there "
                               "[emulate it here in a network namespace]", "link", metavar="[USER@]HOST[:PORT]")
    gpu_addr: str | None = opt(None, "the GPU host's address on the measured link [--gap-gpu-host resolved]; "
                               "alone: a worker already running there", "link", plan="--gpu_host_ip")
    remote_dir: str | None = opt(None, "the project on the GPU host [this path]", "link")
    remote_python: str = opt("python3", "python on the GPU host [{default}]", "link")
    ssh_identity: str | None = opt(None, "ssh private key [ssh's own choice]", "link")
    ssh_known_hosts: str | None = opt(None, "known_hosts file [ssh's own]", "link")
    ssh_accept_new: bool = opt(False, "accept an unknown host key once (StrictHostKeyChecking=accept-new)",
                               "link", action="store_true")
    ssh_config: str | None = opt(None, "ssh configuration file (ssh -F); its Host aliases work as "
                                 "--gap-gpu-host [ssh's own: ~/.ssh/config]", "link", metavar="PATH")
    port: int = opt(29500, "RPC rendezvous port [{default}]", "link", type=int)
    channel: str = opt(DEFAULT_CHANNEL, "TensorPipe TCP channel: mpt_uv (several lanes) | basic (one) "
                       "[{default}]", "link")
    link_gbps: float | None = opt(None, "embedded default: give the veth this line rate each way (tc tbf), as a "
                                  "real NIC has [unshaped: as fast as the CPUs copy]", "link", type=float)
    link_rtt_ms: float | None = opt(None, "embedded default: add this round trip to the link's own, half each way "
                                    "(tc netem; without sch_netem a userspace delay line) [none: the veth's "
                                    "own]", "link", type=float)
    link_profile: str | None = opt(None, "embedded default: a named link that sets --gap-link-gbps: nic25 (the "
                                   "plan's 25 GbE NIC) or nic100; line rates only", "link", metavar="NAME")
    link_nominal_gbps: float | None = opt(None, "the link's rated speed: iperf3 below 80% of it warns", "link",
                                          type=float)
    link_strict: bool = opt(False, "with --gap-link-nominal-gbps: fail the session instead of warning", "link",
                            action="store_true")
    strict: bool = opt(False, "fail, not warn, where the harness misses a target of its own: the RPC path under "
                       "80% of iperf3, the probe's cost over 2%, the capture analysis over 5% of a round, the "
                       "link under 80% of its stated speed", "output", action="store_true")
    compare_fail: tuple = opt((), "with --benchmark-compare: fail a cell whose mean bytes grew more than N% "
                              "(bytes:5%) or whose GPU utilization moved more than N points (gpu:10%)", "output",
                              metavar="METRIC:N%,...")
    clients: tuple = opt((1, 2, 4), "client counts N the clients benchmark runs, one process each "
                         "[{default}]", "clients", metavar="N,...")
    client_sessions: int = opt(2, "closed loop: sessions each client runs back to back (a prefill and "
                               "--gap-steps decode steps each) [{default}]", "clients", type=int)
    request_rate: float | None = opt(None, "open loop: sessions per second over all clients, Poisson arrivals, "
                                     "the N clients their concurrency limit [closed loop]", "clients", type=float)
    burstiness: float = opt(1.0, "open loop: vLLM's burstiness, the gamma shape of the gaps between arrivals "
                            "(1: Poisson; lower: burstier) [{default:g}]", "clients", type=float)
    duration_s: float = opt(120.0, "seconds each clients case may run: no session starts after it, and one "
                            "still running counts as unfinished [{default:g}]", "clients", type=float)
    slots: int | None = opt(None, "session rows of the batched worker's cache [the case's N]", "clients", type=int)
    slo_tpot_ms: float | None = opt(None, "goodput counts the sessions whose TPOT is within this [no goodput]",
                                    "clients", type=float)
    plan_flags: bool = field(default=False, compare=False, repr=False)  # name flags as run_llm.py does

    @property
    def resolved_device(self) -> str:
        return self.device or default_device()

    def host(self) -> GpuHost | None:
        if not self.gpu_host:
            return None
        ssh = SshTarget.parse(self.gpu_host, identity=self.ssh_identity,
                              known_hosts=self.ssh_known_hosts, accept_new=self.ssh_accept_new,
                              config=self.ssh_config)
        return GpuHost(ssh=ssh, python=self.remote_python, repo_dir=self.remote_dir or str(REPO))

    def rounds_for(self, mode: str) -> int:
        """Measured rounds of a mode's cells: the stateful modes' rounds take milliseconds where naive's
        take seconds, so more of them buy a steadier mean (their small rounds vary by a few TCP
        delayed ACKs) for little time."""
        return self.rounds if MODES[mode].stateless or self.rounds_stateful is None else self.rounds_stateful

    @property
    def engine_spec(self) -> EngineSpec:
        """The engine every mode runs, its static cache sized to the prompt and every generated token."""
        return EngineSpec(self.engine or AUTO, self.prompt_len + self.steps + 1, self.batch, self.threads)

    @property
    def spec(self) -> ModelSpec:
        dtype = self.dtype
        if dtype == "auto":
            dtype = "bf16" if self.resolved_device.startswith("cuda") else "fp32"  # as LLMs are served
        return ModelSpec(self.model, dtype, self.seed)

    def flag(self, name: str) -> str:
        """The command-line flag that sets field `name`, for error messages."""
        return flag_of(name, self.plan_flags)

    def validate(self, phases=PHASES) -> "SuiteOptions":
        """Every check that can be made before anything starts; phases: those that will run (the
        context must hold the prompt, and for decode steps + 1 generated tokens)."""
        for name, low in (("prompt_len", 1), ("steps", 1), ("rounds", 1), ("warmup", 0), ("batch", 1),
                          ("util_samples", 0), ("sessions", 1)):
            value = getattr(self, name)
            if value < low:
                raise UsageError(f"{self.flag(name)} {value} must be >= {low}")
        if self.rounds_stateful is not None and self.rounds_stateful < 1:
            raise UsageError(f"{self.flag('rounds_stateful')} {self.rounds_stateful} must be >= 1 (or left out: "
                             f"{self.flag('rounds')}'s)")
        if self.threads is not None and self.threads < 1:
            raise UsageError(f"{self.flag('threads')} {self.threads} must be >= 1 (or left out: 1 on CUDA, "
                             "else one per core)")
        if self.sessions > 1 and self.gpu_addr and not self.gpu_host:
            raise UsageError(f"{self.flag('sessions')} {self.sessions} starts a fresh worker per session, and "
                             f"{self.flag('gpu_addr')} alone reaches one that someone else started: add "
                             f"{self.flag('gpu_host')} (the suite starts it over ssh) or drop {self.flag('sessions')}")
        if self.rpc_timeout_s <= 0:
            raise UsageError(f"{self.flag('rpc_timeout_s')} {self.rpc_timeout_s} must be > 0 (seconds)")
        if self.channel not in CHANNELS:
            raise UsageError(f"{self.flag('channel')} {self.channel!r}: use one of {', '.join(CHANNELS)}")
        self._validate_link()
        self._validate_clients()
        embedded = not (self.gpu_host or self.gpu_addr)  # else the worker's host checks its own device
        if self.engine in GRAPHS and embedded and not self.resolved_device.startswith("cuda"):
            raise UsageError(f"{self.flag('engine')} {self.engine} captures CUDA graphs: it needs a CUDA device, "
                             f"not {self.resolved_device}; use eager, static or compact")
        self.engine_spec  # validates the engine's name
        self.host()  # validates the ssh target
        spec = self.spec  # validates model and dtype
        ctx = max_positions(load_config(spec))
        generated = self.steps + 1 if "decode" in phases else 0
        if self.prompt_len + generated > ctx:
            made = f" + {generated} generated tokens ({self.flag('steps')} {self.steps} + 1)" if generated else ""
            lower = f"{self.flag('prompt_len')} or {self.flag('steps')}" if generated else self.flag('prompt_len')
            raise UsageError(f"{self.flag('prompt_len')} {self.prompt_len}{made} exceeds {self.model}'s "
                             f"context of {ctx}: lower {lower}")
        return self._with_profile()

    def _validate_clients(self) -> None:
        if not self.clients or any(n < 1 for n in self.clients):
            raise UsageError(f"{self.flag('clients')} {','.join(map(str, self.clients))}: each must be >= 1, e.g. 1,4,16")
        for name in ("client_sessions", "slots"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise UsageError(f"{self.flag(name)} {value} must be >= 1")
        for name in ("request_rate", "burstiness", "duration_s", "slo_tpot_ms"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise UsageError(f"{self.flag(name)} {value} must be > 0")

    def _with_profile(self) -> "SuiteOptions":
        """A named link sets the rate it names (_validate_profile saw that no other rate disagrees)."""
        if self.link_profile and self.link_gbps is None:
            return replace(self, link_gbps=PROFILES[self.link_profile])
        return self

    def _validate_link(self) -> None:
        if self.link_nominal_gbps is not None and self.link_nominal_gbps <= 0:
            raise UsageError(f"{self.flag('link_nominal_gbps')} {self.link_nominal_gbps} must be > 0")
        if self.link_strict and self.link_nominal_gbps is None and self.link_gbps is None and not self.link_profile:
            raise UsageError(f"{self.flag('link_strict')} needs {self.flag('link_nominal_gbps')} N "
                             "(the link's rated speed)")
        if self.link_gbps is not None and self.link_gbps <= 0:
            raise UsageError(f"{self.flag('link_gbps')} {self.link_gbps} must be > 0 (Gbit/s)")
        if self.link_gbps and (self.gpu_host or self.gpu_addr):
            raise UsageError(f"{self.flag('link_gbps')} shapes the embedded link only; a real link has "
                             f"its own rate: drop it, or state that rate with {self.flag('link_nominal_gbps')}")
        self._validate_rtt()
        self._validate_profile()

    def _validate_rtt(self) -> None:
        if self.link_rtt_ms is not None and self.link_rtt_ms <= 0:
            raise UsageError(f"{self.flag('link_rtt_ms')} {self.link_rtt_ms} must be > 0 (milliseconds; "
                             "leave it out for the veth's own round trip)")
        if self.link_rtt_ms and (self.gpu_host or self.gpu_addr):
            raise UsageError(f"{self.flag('link_rtt_ms')} delays the embedded link only; a real link has "
                             "its own round trip: drop it")

    def _validate_profile(self) -> None:
        if self.link_profile is None:
            return
        if self.link_profile not in PROFILES:
            raise UsageError(f"{self.flag('link_profile')} {self.link_profile!r}: use one of {', '.join(PROFILES)}")
        rate = PROFILES[self.link_profile]
        if self.link_gbps is not None and self.link_gbps != rate:
            raise UsageError(f"{self.flag('link_profile')} {self.link_profile} is {rate:g} Gbit/s and "
                             f"{self.flag('link_gbps')} {self.link_gbps:g} disagrees: drop one")
        if self.gpu_host or self.gpu_addr:
            raise UsageError(f"{self.flag('link_profile')} shapes the embedded link only; a real link has "
                             f"its own rate: state it with {self.flag('link_nominal_gbps')}")


def flag_of(name: str, plan: bool = False) -> str:
    """The flag of SuiteOptions field `name`: --gap-<name> (an _s suffix dropped, _ as -), or its
    Opt's own; plan: the original plan's name where it has one (run_llm.py)."""
    o = OPTIONS[name]
    return (plan and o.plan) or o.flag or "--gap-" + name.removesuffix("_s").replace("_", "-")


def parse_compare_fail(text: str | None) -> tuple:
    """'bytes:5%,gpu:10%' -> (('bytes', 0.05), ('gpu', 0.10))."""
    if not text:
        return ()
    out = []
    for part in text.split(","):
        m = re.fullmatch(r"\s*(\w+):(\d+(?:\.\d+)?)%\s*", part)
        if not m or m.group(1) not in GATE_METRICS:
            raise UsageError(f"--gap-compare-fail {text!r}: expected METRIC:N% (METRIC one of "
                             f"{', '.join(GATE_METRICS)}), comma separated, e.g. bytes:5%,gpu:10%")
        out.append((m.group(1), float(m.group(2)) / 100))
    return tuple(out)


def parse_counts(text) -> tuple:
    """'1,4,16' -> (1, 4, 16); a tuple passes as it is (the field's default)."""
    if isinstance(text, tuple):
        return text
    try:
        return tuple(int(part) for part in str(text).split(","))
    except ValueError:
        raise UsageError(f"--gap-clients {text!r}: expected whole numbers, comma separated, e.g. 1,4,16") from None


OPTIONS: dict[str, Opt] = {f.name: f.metadata["opt"] for f in fields(SuiteOptions) if "opt" in f.metadata}


def add_options(group: Callable[[str], object], names=None, plan: bool = False, many=(),
                defaults: dict | None = None, helps: dict | None = None) -> None:
    """Declare SuiteOptions fields as flags, each with dest gap_<field>: group(key) returns the
    group to add to (pytest's getgroup, argparse's add_argument_group), whose adder is addoption
    or add_argument. names: the fields (all by default); plan: the original plan's names where a
    field has one; many: fields that take a comma-separated list (a sweep's axes); defaults and
    helps: a command's own, where its meaning differs (a sweep's axes)."""
    groups, defaults, helps = {}, defaults or {}, helps or {}
    for name in names or OPTIONS:
        o = OPTIONS[name]
        if o.group not in groups:
            g = group(o.group)
            groups[o.group] = getattr(g, "addoption", None) or g.add_argument
        default = defaults.get(name, next(f.default for f in fields(SuiteOptions) if f.name == name))
        text = helps.get(name) or o.help.format(default=default)
        kw = {"dest": "gap_" + name, "help": ("comma-separated: " if name in many else "") + text.replace("%", "%%")}
        if o.action:
            kw["action"] = o.action
        elif name in many:
            kw |= {"default": str(default), "metavar": "A,B,..."}
        else:
            kw |= {"default": default, **({"type": o.type} if o.type else {}),
                   **({"metavar": o.metavar} if o.metavar else {})}
        groups[o.group](flag_of(name, plan), **kw)


def values_of(namespace, names=None) -> dict:
    """The fields add_options declared, as read back from a parsed namespace (dest gap_<field>)."""
    return {name: getattr(namespace, "gap_" + name) for name in names or OPTIONS}
