"""Settings spelled once: a `setting()` field is a flag, an environment variable and a help line.

The first half pins the two services' command lines to their dataclasses; the second checks the
generic loader on a small settings class of its own.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import pytest

from ackbot.bot import config as bot_config
from ackbot.common.flags import Command, build_parser, flag_fields, load_settings, setting
from ackbot.common.limits import Limits
from ackbot.store import config as store_config

# field: (flag, environment variable, a value unlike the default, what it loads as). Pinned
# here because the flag and the variable now follow from the field: renaming a field must not
# rename a flag unnoticed.
STORE = {
    "listen": ("--listen", "ACKBOT_STORE_LISTEN", "[::1]:6000", "[::1]:6000"),
    "db_url": (
        "--db",
        "ACKBOT_STORE_DB",
        "postgresql+asyncpg://u@h/db",
        "postgresql+asyncpg://u@h/db",
    ),
    "log_level": ("--log-level", "ACKBOT_STORE_LOG_LEVEL", "warning", "WARNING"),
    "log_format": ("--log-format", "ACKBOT_STORE_LOG_FORMAT", "JSON", "json"),
    "metrics_listen": (
        "--metrics-listen",
        "ACKBOT_STORE_METRICS_LISTEN",
        "0.0.0.0:9464",
        "0.0.0.0:9464",
    ),
    "max_attempts": ("--max-attempts", "ACKBOT_STORE_MAX_ATTEMPTS", "9", 9),
    "hold_new_messages": (
        "--hold-new-messages",
        "ACKBOT_STORE_HOLD_NEW_MESSAGES",
        "yes",
        True,
    ),
    "default_lease_seconds": (
        "--default-lease-seconds",
        "ACKBOT_STORE_DEFAULT_LEASE_SECONDS",
        "30",
        30.0,
    ),
    "grace_seconds": ("--grace-seconds", "ACKBOT_STORE_GRACE_SECONDS", "2", 2.0),
    "lock_timeout_seconds": (
        "--lock-timeout-seconds",
        "ACKBOT_STORE_LOCK_TIMEOUT_SECONDS",
        "3",
        3.0,
    ),
    "sqlite_synchronous": (
        "--sqlite-synchronous",
        "ACKBOT_STORE_SQLITE_SYNCHRONOUS",
        "normal",
        "NORMAL",
    ),
    "max_text_bytes": ("--max-text-bytes", "ACKBOT_STORE_MAX_TEXT_BYTES", "200", 200),
    "heartbeat_seconds": ("--heartbeat-seconds", "ACKBOT_STORE_HEARTBEAT_SECONDS", "2", 2.0),
    "dead_after_seconds": (
        "--dead-after-seconds",
        "ACKBOT_STORE_DEAD_AFTER_SECONDS",
        "10",
        10.0,
    ),
    "max_request_bytes": ("--max-request-bytes", "ACKBOT_STORE_MAX_REQUEST_BYTES", "2000", 2000),
    "wake_poll_seconds": ("--wake-poll-seconds", "ACKBOT_STORE_WAKE_POLL_SECONDS", "30", 30.0),
    "listener_check_seconds": (
        "--listener-check-seconds",
        "ACKBOT_STORE_LISTENER_CHECK_SECONDS",
        "1.5",
        1.5,
    ),
    "retain_processed": ("--retain-processed", "ACKBOT_STORE_RETAIN_PROCESSED", "30d", 2592000.0),
    "retain_dead": ("--retain-dead", "ACKBOT_STORE_RETAIN_DEAD", "12h", 43200.0),
    "retain_deleted": ("--retain-deleted", "ACKBOT_STORE_RETAIN_DELETED", "90m", 5400.0),
    "sweep_seconds": ("--sweep-seconds", "ACKBOT_STORE_SWEEP_SECONDS", "5", 5.0),
    "tls_cert": ("--tls-cert", "ACKBOT_STORE_TLS_CERT", "/c.pem", "/c.pem"),
    "tls_key": ("--tls-key", "ACKBOT_STORE_TLS_KEY", "/k.pem", "/k.pem"),
    "tls_client_ca": ("--tls-client-ca", "ACKBOT_STORE_TLS_CLIENT_CA", "/ca.pem", "/ca.pem"),
    "producer_token_file": (
        "--producer-token-file",
        "ACKBOT_STORE_PRODUCER_TOKEN_FILE",
        "/p",
        "/p",
    ),
    "bot_token_file": ("--bot-token-file", "ACKBOT_STORE_BOT_TOKEN_FILE", "/b", "/b"),
    "admin_token_file": ("--admin-token-file", "ACKBOT_STORE_ADMIN_TOKEN_FILE", "/a", "/a"),
    "cert_roles": ("--cert-roles", "ACKBOT_STORE_CERT_ROLES", "ops=admin", "ops=admin"),
    "allow_insecure_listen": (
        "--allow-insecure-listen",
        "ACKBOT_STORE_ALLOW_INSECURE_LISTEN",
        "yes",
        True,
    ),
    "no_migrate": ("--no-migrate", "ACKBOT_STORE_NO_MIGRATE", "yes", True),
    "db_idle_in_transaction_seconds": (
        "--db-idle-in-transaction-seconds",
        "ACKBOT_STORE_DB_IDLE_IN_TRANSACTION_SECONDS",
        "4",
        4.0,
    ),
    "db_statement_timeout_seconds": (
        "--db-statement-timeout-seconds",
        "ACKBOT_STORE_DB_STATEMENT_TIMEOUT_SECONDS",
        "40",
        40.0,
    ),
    "db_keepalive_seconds": (
        "--db-keepalive-seconds",
        "ACKBOT_STORE_DB_KEEPALIVE_SECONDS",
        "5",
        5.0,
    ),
}
BOT = {
    "store": ("--store", "ACKBOT_BOT_STORE", "[::1]:6000", "[::1]:6000"),
    "listen": ("--listen", "ACKBOT_BOT_LISTEN", "0.0.0.0:6001", "0.0.0.0:6001"),
    "persona": ("--persona", "ACKBOT_BOT_PERSONA", "Bea", "Bea"),
    "max_in_flight": ("--max-in-flight", "ACKBOT_BOT_MAX_IN_FLIGHT", "3", 3),
    "lease_seconds": ("--lease-seconds", "ACKBOT_BOT_LEASE_SECONDS", "30", 30.0),
    "log_level": ("--log-level", "ACKBOT_BOT_LOG_LEVEL", "error", "ERROR"),
    "log_format": ("--log-format", "ACKBOT_BOT_LOG_FORMAT", "json", "json"),
    "metrics_listen": ("--metrics-listen", "ACKBOT_BOT_METRICS_LISTEN", "[::1]:0", "[::1]:0"),
    "grace_seconds": ("--grace-seconds", "ACKBOT_BOT_GRACE_SECONDS", "2", 2.0),
    "retry_base_seconds": ("--retry-base-seconds", "ACKBOT_BOT_RETRY_BASE_SECONDS", "4", 4.0),
    "responder": ("--responder", "ACKBOT_BOT_RESPONDER", "pkg.mod:make", "pkg.mod:make"),
    "backend": ("--backend", "ACKBOT_BOT_BACKEND", "OpenAI", "openai"),
    "llm_url": ("--llm-url", "ACKBOT_BOT_LLM_URL", "http://h:1/v1", "http://h:1/v1"),
    "llm_model": ("--llm-model", "ACKBOT_BOT_LLM_MODEL", "tiny", "tiny"),
    "llm_api_key_file": ("--llm-api-key-file", "ACKBOT_BOT_LLM_API_KEY_FILE", "/k", "/k"),
    "system_prompt": ("--system-prompt", "ACKBOT_BOT_SYSTEM_PROMPT", "Be", "Be"),
    "system_prompt_file": ("--system-prompt-file", "ACKBOT_BOT_SYSTEM_PROMPT_FILE", "/p", "/p"),
    "llm_max_tokens": ("--llm-max-tokens", "ACKBOT_BOT_LLM_MAX_TOKENS", "64", 64),
    "llm_temperature": ("--llm-temperature", "ACKBOT_BOT_LLM_TEMPERATURE", "0.5", 0.5),
    "llm_timeout_seconds": (
        "--llm-timeout-seconds",
        "ACKBOT_BOT_LLM_TIMEOUT_SECONDS",
        "9",
        9.0,
    ),
    "llm_thinking": ("--llm-thinking", "ACKBOT_BOT_LLM_THINKING", "off", "off"),
    "llm_context_turns": ("--llm-context-turns", "ACKBOT_BOT_LLM_CONTEXT_TURNS", "3", 3),
    "llm_context_chars": ("--llm-context-chars", "ACKBOT_BOT_LLM_CONTEXT_CHARS", "500", 500),
    "model_failure_window": ("--model-failure-window", "ACKBOT_BOT_MODEL_FAILURE_WINDOW", "5", 5),
    "model_probe_max_seconds": (
        "--model-probe-max-seconds",
        "ACKBOT_BOT_MODEL_PROBE_MAX_SECONDS",
        "2",
        2.0,
    ),
    "on_stale": ("--on-stale", "ACKBOT_BOT_ON_STALE", "answer-each", "answer-each"),
    "llm_no_think_params": (
        "--llm-no-think-params",
        "ACKBOT_BOT_LLM_NO_THINK_PARAMS",
        "{}",
        "{}",
    ),
    "consumer": ("--consumer", "ACKBOT_BOT_CONSUMER", "bea-7", "bea-7"),
    "store_ca": ("--store-ca", "ACKBOT_BOT_STORE_CA", "/ca.pem", "/ca.pem"),
    "store_cert": ("--store-cert", "ACKBOT_BOT_STORE_CERT", "/c.pem", "/c.pem"),
    "store_key": ("--store-key", "ACKBOT_BOT_STORE_KEY", "/k.pem", "/k.pem"),
    "token_file": ("--token-file", "ACKBOT_BOT_TOKEN_FILE", "/t", "/t"),
    "tls_cert": ("--tls-cert", "ACKBOT_BOT_TLS_CERT", "/sc.pem", "/sc.pem"),
    "tls_key": ("--tls-key", "ACKBOT_BOT_TLS_KEY", "/sk.pem", "/sk.pem"),
    "tls_client_ca": ("--tls-client-ca", "ACKBOT_BOT_TLS_CLIENT_CA", "/cca.pem", "/cca.pem"),
    "allow_insecure_listen": (
        "--allow-insecure-listen",
        "ACKBOT_BOT_ALLOW_INSECURE_LISTEN",
        "1",
        True,
    ),
}
SERVICES = [
    pytest.param(
        store_config.StoreConfig, store_config.COMMAND, store_config.load_config, STORE, id="store"
    ),
    pytest.param(bot_config.BotConfig, bot_config.COMMAND, bot_config.load_config, BOT, id="bot"),
]


def _help(load, env, capsys, monkeypatch) -> str:
    # Wide enough that argparse wraps nothing; the words are then compared whitespace-blind.
    monkeypatch.setenv("COLUMNS", "1000")
    with pytest.raises(SystemExit) as caught:
        load(["--help"], env)
    assert caught.value.code == 0
    return " ".join(capsys.readouterr().out.split())


@pytest.mark.parametrize(("cls", "command", "load", "table"), SERVICES)
def test_every_setting_is_the_pinned_flag_and_variable(cls, command, load, table):
    declared = {f.field.name: (f.flag, f.env_name) for f in flag_fields(cls, command.env_prefix)}
    assert declared == {name: row[:2] for name, row in table.items()}
    actions = build_parser(cls, command, {})._actions
    parser_flags = {option for action in actions for option in action.option_strings}
    assert parser_flags - {"-h", "--help", "--version"} == {
        flag for flag, _env in declared.values()
    }


@pytest.mark.parametrize(("cls", "command", "load", "table"), SERVICES)
def test_help_lists_every_setting_with_its_variable(cls, command, load, table, capsys, monkeypatch):
    text = _help(load, {}, capsys, monkeypatch)
    for item in flag_fields(cls, command.env_prefix):
        assert f" {item.flag} " in text
        assert f"{item.spec.help_text} (env {item.env_name}; default " in text


@pytest.mark.parametrize(("cls", "command", "load", "table"), SERVICES)
def test_every_setting_round_trips_from_the_environment(cls, command, load, table):
    config = load([], {env: raw for _flag, env, raw, _loaded in table.values()})
    defaults = cls()
    for name, (_flag, _env, _raw, loaded) in table.items():
        assert getattr(config, name) == loaded, name
        assert loaded != getattr(defaults, name), f"{name}: pick a value unlike the default"


@pytest.mark.parametrize(("cls", "command", "load", "table"), SERVICES)
def test_every_setting_round_trips_from_its_flag(cls, command, load, table):
    config = load([f"{flag}={raw}" for flag, _env, raw, _loaded in table.values()], {})
    for name, (_flag, _env, _raw, loaded) in table.items():
        assert getattr(config, name) == loaded, name


def test_the_store_limits_follow_their_settings():
    config = store_config.load_config(["--max-text-bytes=10", "--max-request-bytes=20"], {})
    assert config.limits == Limits(max_text_bytes=10, max_request_bytes=20)


@pytest.mark.parametrize("load", [store_config.load_config, bot_config.load_config])
def test_a_switch_alone_turns_it_on_and_no_turns_it_off(load):
    assert load(["--allow-insecure-listen"], {}).allow_insecure_listen is True
    assert load(["--allow-insecure-listen=no"], {}).allow_insecure_listen is False
    assert load([], {}).allow_insecure_listen is False


def test_tokens_come_from_variables_and_are_never_shown():
    env = {"ACKBOT_STORE_BOT_TOKEN": " b0t-secret\n", "ACKBOT_STORE_ADMIN_TOKEN": "adm1n"}
    config = store_config.load_config([], env)
    assert {role.value: token for role, token in config.tokens.items()} == {
        "bot": "b0t-secret",
        "admin": "adm1n",
    }
    assert "secret" not in repr(config)
    assert "adm1n" not in repr(config.authenticator())
    bot = bot_config.load_config([], {"ACKBOT_BOT_TOKEN": "b0t-secret"})
    assert bot.token == "b0t-secret"
    assert "secret" not in repr(bot)


@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (["--tls-cert", "/c"], "--tls-cert"),
        (["--tls-key", "/k"], "--tls-cert"),
        (["--tls-client-ca", "/ca"], "--tls-client-ca"),
        (["--cert-roles", "ops=admin"], "--cert-roles"),
        (["--cert-roles", "ops=root"], "--cert-roles"),
    ],
)
def test_store_tls_flags_that_do_not_go_together_exit_2(argv, flag, capsys):
    with pytest.raises(SystemExit) as caught:
        store_config.load_config(argv, {})
    assert caught.value.code == 2
    assert f"argument {flag}" in capsys.readouterr().err


def test_a_bot_token_goes_to_a_remote_store_only_over_tls(capsys):
    with pytest.raises(SystemExit) as caught:
        bot_config.load_config(["--store", "10.0.0.5:6001"], {"ACKBOT_BOT_TOKEN": "tok-XYZ"})
    assert caught.value.code == 2
    err = capsys.readouterr().err
    assert "argument --store-ca" in err
    assert "tok-XYZ" not in err
    config = bot_config.load_config(
        ["--store", "10.0.0.5:6001", "--store-ca", "/ca"], {"ACKBOT_BOT_TOKEN": "tok-XYZ"}
    )
    assert config.token == "tok-XYZ"


def test_fields_without_a_setting_are_not_flags(capsys, monkeypatch):
    text = _help(store_config.load_config, {}, capsys, monkeypatch)
    assert "max-in-flight" not in text
    assert "page-size" not in text


# The loader on its own.

LEVELS = ("LOW", "HIGH")


@dataclass(frozen=True)
class Toy:
    count: int = setting(1, "how many", type=int)
    level: str = setting("LOW", "how loud", choices=LEVELS, type=str.upper)
    where: str = setting("here", "where to", flag="--place", metavar="PLACE")
    note: str | None = setting(None, "a note", shown_default="none at all")
    fixed: int = 7


TOY = Command(prog="toy", summary="A toy.", env_prefix="TOY_")


def load_toy(argv, env) -> Toy:
    return load_settings(Toy, TOY, argv, env)


def test_nothing_set_gives_the_dataclass():
    assert load_toy([], {}) == Toy()


def test_a_flag_wins_over_its_variable_and_an_empty_variable_is_unset():
    env = {"TOY_COUNT": "5", "TOY_LEVEL": "", "TOY_PLACE": "there"}
    assert load_toy(["--count=6"], env) == Toy(count=6, where="there")


def test_a_bad_variable_is_reported_under_the_flag_and_the_variable(capsys):
    with pytest.raises(SystemExit) as caught:
        load_toy([], {"TOY_COUNT": "many"})
    assert caught.value.code == 2
    err = capsys.readouterr().err
    assert "toy: error: argument --count: TOY_COUNT (environment): invalid int value: 'many'" in err


def test_a_bad_flag_is_not_blamed_on_the_environment(capsys):
    with pytest.raises(SystemExit):
        load_toy(["--count", "many"], {"TOY_COUNT": "5"})
    assert "argument --count: invalid int value: 'many'" in capsys.readouterr().err


def test_listen_flags_show_host_port():
    usage = build_parser(store_config.StoreConfig, store_config.COMMAND, {}).format_usage()
    assert "--listen HOST:PORT" in usage
    assert "--metrics-listen HOST:PORT" in usage


def test_a_bad_variable_is_ignored_when_the_flag_is_given():
    assert load_toy(["--count=2"], {"TOY_COUNT": "many"}).count == 2


def test_choices_are_checked_for_variables_too(capsys):
    with pytest.raises(SystemExit) as caught:
        load_toy([], {"TOY_LEVEL": "medium"})
    assert caught.value.code == 2
    assert "argument --level: invalid choice: 'MEDIUM'" in capsys.readouterr().err
    assert load_toy([], {"TOY_LEVEL": "high"}).level == "HIGH"


def test_a_field_without_a_setting_is_no_flag(capsys):
    with pytest.raises(SystemExit):
        load_toy(["--fixed=1"], {})
    assert "unrecognized arguments: --fixed=1" in capsys.readouterr().err


def test_help_shows_flags_variables_and_defaults(capsys, monkeypatch):
    text = _help(load_toy, {"TOY_COUNT": "50%"}, capsys, monkeypatch)
    assert (
        "usage: toy [-h] [--version] [--count COUNT] [--level {LOW,HIGH}] [--place PLACE]"
        " [--note NOTE]" in text
    )
    assert "Every flag can also be set by environment: TOY_<FLAG>, e.g. TOY_COUNT;" in text
    # A set variable is the default that applies, and a '%' in it is no format.
    assert "how many (env TOY_COUNT; default 50%)" in text
    assert "where to (env TOY_PLACE; default here)" in text
    assert "a note (env TOY_NOTE; default none at all)" in text


def test_the_parser_uses_argparse_as_is():
    parser = build_parser(Toy, TOY, {})
    assert isinstance(parser, argparse.ArgumentParser)
    assert parser.parse_args(["--place", "x"]) == argparse.Namespace(where="x")
