"""The bot's Prometheus metrics, beside the gRPC ones of its health server
(ackbot.common.metrics): what became of each delivery, how long the responder took, whether the
model server is up (the breaker, ackbot.bot.breaker) and how many tokens it spent."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from ackbot.common.metrics import GrpcServerMetrics

# What became of a delivery (ackbot_bot_replies_total{outcome}).
ANSWERED = "answered"  # a reply stored
SILENT = "silent"  # the responder returned None: processed without a reply
EMPTY = "empty"  # the responder returned "": processed without a reply
DUPLICATE = "duplicate"  # another reply had already been stored
RATE_LIMITED = "rate_limited"  # the backend was busy: handed back, attempt not counted
# The responder's dependency (the model server) is down: handed back unstarted, not counted.
DEPENDENCY_DOWN = "dependency_down"
FAILED = "failed"  # the responder failed or the store refused the reply: released to retry
LEASE_LOST = "lease_lost"  # the lease was gone before the reply: abandoned
GONE = "gone"  # the message no longer exists
# A newer message of its conversation came: processed without a reply (--on-stale supersede).
SUPERSEDED = "superseded"
OUTCOMES = (
    ANSWERED,
    SILENT,
    EMPTY,
    DUPLICATE,
    RATE_LIMITED,
    DEPENDENCY_DOWN,
    FAILED,
    LEASE_LOST,
    GONE,
    SUPERSEDED,
)

# Why a delivery failed (ackbot_bot_failures_total{kind}).
RESPONDER_ERROR = "responder_error"
RESPONDER_CANCELLED = "responder_cancelled"
STORE_REJECTED = "store_rejected"
MARK_FAILED = "mark_failed"
FAILURE_KINDS = (RESPONDER_ERROR, RESPONDER_CANCELLED, STORE_REJECTED, MARK_FAILED, LEASE_LOST)

# Token counts of the model's `usage` (ackbot_bot_model_tokens_total{kind}).
PROMPT_TOKENS = "prompt"
COMPLETION_TOKENS = "completion"

# From a canned persona (milliseconds) to a local LLM on a CPU (a minute or more).
_RESPONDER_BUCKETS = (0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class BotMetrics:
    """Everything a bot exports, in one registry of its own."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry = registry or CollectorRegistry()
        self.grpc = GrpcServerMetrics(registry)
        self.replies = Counter(
            "ackbot_bot_replies",
            "deliveries by what became of them",
            ("outcome",),
            registry=registry,
        )
        self.responder_seconds = Histogram(
            "ackbot_bot_responder_seconds",
            "time the responder took for one message (successful or not)",
            buckets=_RESPONDER_BUCKETS,
            registry=registry,
        )
        self.failures = Counter(
            "ackbot_bot_failures", "failed deliveries by kind", ("kind",), registry=registry
        )
        self.model_up = Gauge(
            "ackbot_bot_model_up",
            "1 while the model server answers (the breaker is closed), else 0",
            registry=registry,
        )
        self.breaker_transitions = Counter(
            "ackbot_bot_model_breaker_transitions",
            "opens and closes of the model breaker, by the state entered and the cause",
            ("state", "cause"),
            registry=registry,
        )
        self.model_tokens = Counter(
            "ackbot_bot_model_tokens",
            "tokens the model server reported in its answers' usage, by kind",
            ("kind",),
            registry=registry,
        )
        for kind in (PROMPT_TOKENS, COMPLETION_TOKENS):
            self.model_tokens.labels(kind)
        # Every label exists from the start, so a rate() over it has a zero to start from.
        for outcome in OUTCOMES:
            self.replies.labels(outcome)
        for kind in FAILURE_KINDS:
            self.failures.labels(kind)

    def reply(self, outcome: str) -> None:
        self.replies.labels(outcome).inc()

    def failure(self, kind: str) -> None:
        self.failures.labels(kind).inc()

    def breaker_transition(self, state: str, cause: str) -> None:
        self.breaker_transitions.labels(state, cause).inc()
        self.model_up.set(1 if state == "closed" else 0)

    def tokens(self, prompt: int, completion: int) -> None:
        self.model_tokens.labels(PROMPT_TOKENS).inc(max(prompt, 0))
        self.model_tokens.labels(COMPLETION_TOKENS).inc(max(completion, 0))
