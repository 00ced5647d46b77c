"""The suite's options, read once into one typed object and validated before anything starts."""
from __future__ import annotations

import re
from dataclasses import dataclass, field, replace

from harness.compute.engine import AUTO, GRAPHS, EngineSpec
from harness.compute.modes import MODES
from harness.compute.models import ModelSpec, default_device, load_config, max_positions
from harness.compute.phase import PHASES
from harness.errors import UsageError
from harness.testbed.hosts import GpuHost, SshTarget
from harness.testbed.launcher import REPO
from harness.testbed.link import PROFILES
from harness.testbed.rpc import CHANNELS, DEFAULT_CHANNEL

GATE_METRICS = ("bytes", "gpu")


@dataclass(frozen=True)
class SuiteOptions:
    model: str = "tiny"
    dtype: str = "auto"
    device: str | None = None
    prompt_len: int = 128
    steps: int = 50
    rounds: int = 3
    rounds_stateful: int | None = None  # local and sys_simulated cells' measured rounds; None: rounds
    warmup: int = 1
    seed: int = 0
    gpu_host: str | None = None       # ssh target [user@]host[:port]: start the worker there
    gpu_addr: str | None = None       # the GPU host's link address (RPC); default: resolve gpu_host
    remote_dir: str | None = None     # the project on the GPU host; default: this checkout's path
    remote_python: str = "python3"
    ssh_identity: str | None = None
    ssh_known_hosts: str | None = None
    ssh_accept_new: bool = False
    ssh_config: str | None = None     # an ssh_config file (ssh -F); default: ssh's own
    port: int = 29500
    channel: str = DEFAULT_CHANNEL
    rpc_timeout_s: float = 30.0
    capture: bool = True
    compare_fail: tuple = ()      # (("bytes", 0.05), ("gpu", 0.10)): fractions
    link_nominal_gbps: float | None = None   # warn when iperf3 gets < 80% of it
    link_gbps: float | None = None            # embedded default: shape the veth to this rate
    link_rtt_ms: float | None = None          # embedded default: add this round trip (netem, half each way)
    link_profile: str | None = None           # a named link (testbed.link.PROFILES): sets link_gbps
    link_strict: bool = False                 # ... and fail instead
    batch: int = 1              # sequences decoded together, as a serving system batches
    engine: str | None = None   # harness.compute.engine.ENGINES; None: compact on CUDA (graphs-all for other families), else eager
    threads: int | None = None  # host intra-op threads for the model; None: 1 on CUDA, else one per core
    util_samples: int = 5       # dmon samples a cell's utilization window holds at least; 0: no window
    strict: bool = False      # a missed harness target (RPC path, probe cost, analysis share) fails, not warns
    # field -> the flag that sets it, where not --gap-<field> (run_llm.py names some differently)
    flags: dict = field(default_factory=dict, compare=False, repr=False)

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
        return self.flags.get(name) or "--gap-" + name.removesuffix("_s").replace("_", "-")

    def validate(self, phases=PHASES) -> "SuiteOptions":
        """Every check that can be made before anything starts; phases: those that will run (the
        context must hold the prompt, and for decode steps + 1 generated tokens)."""
        for name, low in (("prompt_len", 1), ("steps", 1), ("rounds", 1), ("warmup", 0), ("batch", 1),
                          ("util_samples", 0)):
            value = getattr(self, name)
            if value < low:
                raise UsageError(f"{self.flag(name)} {value} must be >= {low}")
        if self.rounds_stateful is not None and self.rounds_stateful < 1:
            raise UsageError(f"{self.flag('rounds_stateful')} {self.rounds_stateful} must be >= 1 (or left out: "
                             f"{self.flag('rounds')}'s)")
        if self.threads is not None and self.threads < 1:
            raise UsageError(f"{self.flag('threads')} {self.threads} must be >= 1 (or left out: 1 on CUDA, "
                             "else one per core)")
        if self.rpc_timeout_s <= 0:
            raise UsageError(f"{self.flag('rpc_timeout_s')} {self.rpc_timeout_s} must be > 0 (seconds)")
        if self.channel not in CHANNELS:
            raise UsageError(f"{self.flag('channel')} {self.channel!r}: use one of {', '.join(CHANNELS)}")
        self._validate_link()
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
