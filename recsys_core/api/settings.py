"""The settings of `recsys serve`: operator flags only (no request names a path). Light to import: the CLI's
parser reads the defaults without loading the engine."""

from __future__ import annotations

from dataclasses import dataclass

from recsys_core.errors import ConfigError

# on: every model's concurrent requests are scored together (greedy: a lone request at once); auto: only
# order-aware (sequential) models', whose forward pass costs most; off: each request alone.
BATCH_MODES = ("on", "auto", "off")


@dataclass(frozen=True)
class ServeSettings:
    """Everything a server process needs; operator flags only (no request names a path)."""

    dataset: str = "demo"
    workspace: str | None = None
    model_dir: str | None = None  # serve this folder instead of the dataset's best run (no swapping)
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1
    poll_s: float = 5.0  # how often the active run is checked; 0: never
    # on: demo, load 0.4-1.1, EASE p99 at 800 requests/s 15.5 ms batched vs 61 ms alone (bench/results/serve-demo)
    batch: str = "on"
    batch_max: int = 32  # requests scored in one forward pass at most
    # 0: greedy batching, no window (a lone request is scored at once; those arriving meanwhile form the next
    # batch). With a fixed 2 ms window SASRec+ had p99 90 ms at 400 requests/s on the demo (load 1.1-2.5), without
    # it 25.5 ms (load 0.7-1.2): not a side-by-side run, but a lone request no longer waits 2 ms for nobody.
    batch_wait_ms: float = 0.0
    max_k: int = 100
    max_history: int = 500
    max_body_bytes: int = 64 * 1024
    explain_budget_ms: float = 50.0
    threads: int = 1  # torch threads per worker

    def __post_init__(self) -> None:
        checks = {"workers": self.workers >= 1, "batch_max": self.batch_max >= 1, "batch_wait_ms": self.batch_wait_ms >= 0,
                  "max_k": self.max_k >= 1, "max_history": self.max_history >= 1, "max_body_bytes": self.max_body_bytes >= 256,
                  "poll_s": self.poll_s >= 0, "threads": self.threads >= 1, "batch": self.batch in BATCH_MODES,
                  "port": 0 <= self.port < 65536, "explain_budget_ms": self.explain_budget_ms >= 0}
        for name, ok in checks.items():
            if not ok:
                raise ConfigError(f"{name}={getattr(self, name)!r} is out of range", setting=name,
                                  hint=f"batch is one of {', '.join(BATCH_MODES)}; sizes and times are positive")

    @property
    def limits(self):
        """The use cases' `Limits` from these settings."""
        from recsys_core.recommend.usecases import Limits

        return Limits(max_k=self.max_k, max_history=self.max_history)
