"""The validated, immutable model. Everything past `lg.config` works with these, never with raw YAML."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Literal

from lg.errors import Location

FrozenMap = MappingProxyType[str, str]


def frozen_map(data: dict[str, str] | None = None) -> FrozenMap:
    return MappingProxyType(dict(data or {}))


# --- lg.yaml ---------------------------------------------------------------------------------------------

HYPERVISOR_NAMES: tuple[str, ...] = ("qemu", "firecracker", "cloud-hypervisor", "apple")
"""The backends: the keys of lg.vm.registry.HYPERVISORS, which a test keeps equal to this (the config layer must
not import lg.vm, which would load the backends' code to validate a file)."""
AUTO_HYPERVISOR = "auto"
"""`hypervisor: auto`: the best backend whose probe says it can run VMs on this host (lg.vm.registry.resolve)."""
HYPERVISOR_CHOICES: tuple[str, ...] = (*HYPERVISOR_NAMES, AUTO_HYPERVISOR)
"""The `hypervisor:` values every schema accepts (lg.yaml, a pipeline, a step)."""



@dataclass(frozen=True)
class PoolSettings:
    min_idle: int = 0
    max_idle: int = 2
    max_active: int = 8
    lease_timeout: float = 120.0
    snapshots: bool = True  # False: no templates, no VMs made ahead; every lease cold-boots


@dataclass(frozen=True)
class StepCacheLimits:
    """How big the step cache (`cache:` of steps) may grow; past max_total the least recently used go first."""

    max_entry_mib: int = 2048
    max_total_mib: int = 10240


@dataclass(frozen=True)
class WebhookSpec:
    """Where gate events are POSTed, signed with HMAC-SHA256 under a key read from the environment."""

    url: str
    secret_env: str  # the environment variable holding the signing key (never the key itself in a file)
    events: tuple[str, ...] = ("gate.opened", "gate.decided")


@dataclass(frozen=True)
class ProjectPaths:
    """Where named profiles, policies and image recipes are looked up, in order."""

    vm_profiles: tuple[Path, ...]
    risk_policies: tuple[Path, ...]
    seccomp: tuple[Path, ...]
    apparmor: tuple[Path, ...]
    images: tuple[Path, ...]


@dataclass(frozen=True)
class ModelPrice:
    """What a model costs, in US dollars per million tokens (lg.yaml `model_prices`, for agent steps)."""

    input_per_mtok: float
    output_per_mtok: float

    def cost(self, tokens_in: int, tokens_out: int) -> float:
        return (tokens_in * self.input_per_mtok + tokens_out * self.output_per_mtok) / 1_000_000


@dataclass(frozen=True)
class ProjectConfig:
    source: Path | None  # the lg.yaml read, or None for built-in defaults
    root: Path
    hypervisor: str
    accelerator: str
    image: str
    profile: str
    policy: str
    state_dir: Path
    cache_dir: Path
    pool: PoolSettings
    paths: ProjectPaths
    step_cache: StepCacheLimits = field(default_factory=StepCacheLimits)
    webhooks: tuple[WebhookSpec, ...] = ()
    max_parallel: int | None = None  # a pipeline's default (its own `max_parallel:` wins)
    # `state: postgresql://...` (or LG_STATE_URL, which wins): run records, gates, tokens and the audit log in
    # that PostgreSQL database; state_dir then keeps only local files (step logs, held effects). None: SQLite.
    state_url: str | None = None
    server: str | None = None  # the lg serve URL client commands use (lg.client.settings)
    model_prices: Mapping[str, ModelPrice] = field(default_factory=lambda: MappingProxyType({}))


# --- pipelines -------------------------------------------------------------------------------------------

OnTimeout = Literal["reject", "fail", "continue"]


@dataclass(frozen=True)
class ApprovalSpec:
    """An explicit gate on a step (`approve:`). Its semantics arrive with the approvals issue."""

    approvers: tuple[str, ...] = ()  # user names or `group:NAME`; empty means anyone in allowed_signers
    count: int = 1
    timeout: float | None = None  # seconds
    on_timeout: OnTimeout = "reject"
    reason: str = ""


@dataclass(frozen=True)
class SecretSpec:
    """Where a secret's value comes from. The value itself is read only at run time, and never printed."""

    name: str
    from_env: str | None = None
    from_file: Path | None = None


@dataclass(frozen=True)
class OutputSpec:
    """An output a step produces: a `key=value` line in `$LG_OUTPUT`, or the content of a file."""

    name: str
    file: str | None = None


InputType = Literal["string", "number", "boolean", "choice"]
INPUT_TYPES: tuple[str, ...] = ("string", "number", "boolean", "choice")
InputValue = str | int | float | bool


@dataclass(frozen=True)
class InputSpec:
    """A declared run input (`inputs:`): given with `lg run --input NAME=VALUE`, read as `inputs.NAME`."""

    name: str
    type: InputType
    default: InputValue | None  # None: required
    description: str = ""
    options: tuple[str, ...] = ()  # the values a `choice` accepts
    location: Location = field(compare=False, default=Location(None))

    @property
    def required(self) -> bool:
        return self.default is None


@dataclass(frozen=True)
class CacheSpec:
    """Directories kept between runs: restored into the step's VM before it runs, saved after it succeeds."""

    key: str  # a template, rendered when the step runs (hashFiles() reads the host workspace then)
    paths: tuple[str, ...]  # relative to the workspace


@dataclass(frozen=True)
class MatrixGroup:
    """The expansions of one matrix step, run as a group: at most `max_parallel` of them at once (None: no
    limit of their own), and `fail_fast` (None: the pipeline's) says whether one failing cancels the others."""

    id: str  # the matrix step's id in the file (its expansions' ids add the values)
    max_parallel: int | None = None
    fail_fast: bool | None = None


AGENT_TOOLS: tuple[str, ...] = ("shell", "read_file", "write_file", "list_files")
"""The built-in tools of an agent step, each run inside the step's VM (lg.agent.tools)."""


@dataclass(frozen=True)
class McpServerSpec:
    """An MCP server an agent step may call (Streamable HTTP), from lg on the host, never from the VM."""

    name: str
    url: str


@dataclass(frozen=True)
class AgentBudget:
    """What one agent step may spend; None: no limit of that kind (max_turns still ends it)."""

    usd: float | None = None
    tokens: int | None = None


@dataclass(frozen=True)
class AgentSpec:
    """`uses: agent` with its `with:` keys (docs/agents.md)."""

    model: str
    task: str  # templated like `run:`; templates over step outputs stay unrendered until run time
    tools: tuple[str, ...]
    mcp: tuple[McpServerSpec, ...] = ()
    max_turns: int = 20
    budget: AgentBudget = field(default_factory=AgentBudget)
    api_key: str | None = None  # the name of a declared secret: passed to litellm, never to the VM
    api_base: str | None = None


@dataclass(frozen=True)
class Step:
    id: str
    name: str
    run: str | None  # shell script text; templates over step outputs stay unrendered until run time
    uses: str | None
    needs: tuple[str, ...]
    condition: str | None  # the `if:` expression, a jinja2 expression
    env: FrozenMap
    workdir: str | None
    timeout: float | None
    retries: int
    continue_on_error: bool
    outputs: tuple[OutputSpec, ...]
    artifacts: tuple[str, ...]
    matrix: FrozenMap  # the values of this expansion (empty if the step has no matrix)
    profile: str | None
    hypervisor: str | None
    image: str | None
    approve: ApprovalSpec | None
    location: Location = field(compare=False, default=Location(None))
    cache: CacheSpec | None = None
    artifacts_from: FrozenMap = field(default_factory=frozen_map)  # needed step id -> absolute guest path
    matrix_group: MatrixGroup | None = None  # set on each expansion of a matrix step
    agent: AgentSpec | None = None  # set when `uses: agent`

    @property
    def display_name(self) -> str:
        return self.name or self.id


@dataclass(frozen=True)
class Pipeline:
    path: Path
    name: str
    description: str
    hypervisor: str
    image: str
    profile: str
    policy: str
    vars: FrozenMap
    env: FrozenMap
    secrets: tuple[SecretSpec, ...]
    timeout: float | None
    steps: tuple[Step, ...]
    policy_location: Location = field(compare=False, default=Location(None))
    profile_location: Location = field(compare=False, default=Location(None))
    max_parallel: int | None = None  # steps run at once; None: lg.yaml's, else from the pool and the cores
    fail_fast: bool = True  # a step that fails cancels the running ones and skips those not started
    inputs: tuple[InputSpec, ...] = ()
    input_values: Mapping[str, InputValue] = field(default_factory=lambda: MappingProxyType({}))

    def step(self, step_id: str) -> Step:
        for step in self.steps:
            if step.id == step_id:
                return step
        raise KeyError(step_id)


# --- what a step did ------------------------------------------------------------------------------------

ChangeKind = Literal["created", "modified", "deleted"]


@dataclass(frozen=True)
class FileChange:
    """One change a step made to its workspace, as the guest agent reports it (paths are workspace-relative)."""

    path: str  # POSIX, relative to the workspace root, never starting with '/' or containing '..'
    kind: ChangeKind
    size: int | None = None  # after the change; None when deleted
    sha256: str | None = None  # of the content after the change (of the link text for symlinks)
    mode: int | None = None  # permission bits after the change (e.g. 0o755)
    old_mode: int | None = None  # permission bits before (modified/deleted)
    symlink_target: str | None = None  # set when the path is a symlink after the change

    @property
    def executable(self) -> bool:
        return self.mode is not None and bool(self.mode & 0o111)
