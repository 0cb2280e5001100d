"""Bot settings from flags and ACKBOT_BOT_* variables; a flag wins; bad values exit 2."""

from __future__ import annotations

import pytest

from ackbot.bot.config import BotConfig, default_consumer, load_config


def test_defaults():
    config = load_config([], {}, pid=4242)
    assert config == BotConfig(consumer="ackbot-4242")
    assert config.responder is None


def test_flags():
    config = load_config(
        [
            "--store=10.0.0.1:7000",
            "--listen=127.0.0.1:0",
            "--persona=Ava",
            "--max-in-flight=1000",
            "--lease-seconds=2.5",
            "--log-level=debug",
            "--grace-seconds=0",
            "--retry-base-seconds=0.25",
            "--responder=ackbot.testing.responders:silent",
            "--consumer=ava-one",
        ],
        {},
    )
    assert config == BotConfig(
        store="10.0.0.1:7000",
        listen="127.0.0.1:0",
        persona="Ava",
        max_in_flight=1000,
        lease_seconds=2.5,
        log_level="DEBUG",
        grace_seconds=0.0,
        retry_base_seconds=0.25,
        responder="ackbot.testing.responders:silent",
        consumer="ava-one",
    )


ENV = {
    "ACKBOT_BOT_STORE": "[::1]:6000",
    "ACKBOT_BOT_LISTEN": "0.0.0.0:6001",
    "ACKBOT_BOT_PERSONA": "Bea",
    "ACKBOT_BOT_MAX_IN_FLIGHT": "3",
    "ACKBOT_BOT_LEASE_SECONDS": "30",
    "ACKBOT_BOT_LOG_LEVEL": "warning",
    "ACKBOT_BOT_GRACE_SECONDS": "2",
    "ACKBOT_BOT_RETRY_BASE_SECONDS": "4",
    "ACKBOT_BOT_RESPONDER": "pkg.mod:make",
    "ACKBOT_BOT_CONSUMER": "bea-7",
}


def test_environment():
    config = load_config([], ENV)
    assert config == BotConfig(
        store="[::1]:6000",
        listen="0.0.0.0:6001",
        persona="Bea",
        max_in_flight=3,
        lease_seconds=30.0,
        log_level="WARNING",
        grace_seconds=2.0,
        retry_base_seconds=4.0,
        responder="pkg.mod:make",
        consumer="bea-7",
    )


def test_a_flag_beats_the_environment():
    config = load_config(["--max-in-flight", "9", "--persona", "Flag"], ENV)
    assert config.max_in_flight == 9
    assert config.persona == "Flag"
    assert config.store == "[::1]:6000"  # the rest still from the environment


def test_an_empty_variable_counts_as_unset():
    config = load_config([], {"ACKBOT_BOT_RESPONDER": "", "ACKBOT_BOT_PERSONA": ""}, pid=1)
    assert config.responder is None
    assert config.persona == "ackbot"


def test_the_process_environment_is_the_default(monkeypatch):
    monkeypatch.setenv("ACKBOT_BOT_MAX_IN_FLIGHT", "5")
    assert load_config([]).max_in_flight == 5


def test_the_consumer_defaults_to_persona_and_pid():
    assert load_config(["--persona", "Ava"], {}, pid=17).consumer == "Ava-17"


def test_a_default_consumer_fits_the_stores_limit():
    name = default_consumer("p" * 64, 1234567)
    assert len(name) == 64
    assert name.endswith("-1234567")


@pytest.mark.parametrize(
    ("args", "flag"),
    [
        (["--store", "nohost"], "--store"),
        (["--store", "host:99999"], "--store"),
        (["--listen", "127.0.0.1:"], "--listen"),
        (["--persona", ""], "--persona"),
        (["--persona", "x" * 65], "--persona"),
        (["--persona", "bad\x07name"], "--persona"),
        (["--max-in-flight", "0"], "--max-in-flight"),
        (["--max-in-flight", "1001"], "--max-in-flight"),
        (["--max-in-flight", "two"], "--max-in-flight"),
        (["--lease-seconds", "0.5"], "--lease-seconds"),
        (["--lease-seconds", "3601"], "--lease-seconds"),
        (["--lease-seconds", "nan"], "--lease-seconds"),
        (["--log-level", "chatty"], "--log-level"),
        (["--grace-seconds", "-1"], "--grace-seconds"),
        (["--grace-seconds", "inf"], "--grace-seconds"),
        (["--retry-base-seconds", "-0.1"], "--retry-base-seconds"),
        (["--retry-base-seconds", "301"], "--retry-base-seconds"),
        (["--responder", "module_only"], "--responder"),
        (["--responder", ":attr"], "--responder"),
        (["--consumer", "c" * 65], "--consumer"),
    ],
)
def test_bad_flags_exit_2_naming_the_flag(args, flag, capsys):
    with pytest.raises(SystemExit) as exit_info:
        load_config(args, {})
    assert exit_info.value.code == 2
    assert f"argument {flag}" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("name", "value", "flag"),
    [
        ("ACKBOT_BOT_MAX_IN_FLIGHT", "0", "--max-in-flight"),
        ("ACKBOT_BOT_LEASE_SECONDS", "soon", "--lease-seconds"),
        ("ACKBOT_BOT_LOG_LEVEL", "loud", "--log-level"),
        ("ACKBOT_BOT_STORE", "localhost", "--store"),
    ],
)
def test_bad_environment_values_exit_2_naming_the_flag(name, value, flag, capsys):
    with pytest.raises(SystemExit) as exit_info:
        load_config([], {name: value})
    assert exit_info.value.code == 2
    assert f"argument {flag}" in capsys.readouterr().err


# -- several stores -----------------------------------------------------------------------------


def test_one_store_is_a_list_of_one():
    config = load_config(["--store", "10.0.0.1:7000"], {})
    assert config.store == "10.0.0.1:7000"
    assert config.stores == ("10.0.0.1:7000",)


@pytest.mark.parametrize("source", ["flag", "env"])
def test_several_stores_in_failover_order_names_and_ip_literals_alike(source):
    text = "store-a.internal:6001, 127.0.0.1:6002 ,[::1]:6003"
    if source == "flag":
        config = load_config(["--store", text], {})
    else:
        config = load_config([], {"ACKBOT_BOT_STORE": text})
    assert config.store == "store-a.internal:6001,127.0.0.1:6002,[::1]:6003"
    assert config.stores == ("store-a.internal:6001", "127.0.0.1:6002", "[::1]:6003")


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("a:1,,b:2", "empty entry in 'a:1,,b:2'"),
        ("a:1,", "empty entry in 'a:1,'"),
        (",a:1", "empty entry in ',a:1'"),
        ("a:1, ,b:2", "empty entry"),
        ("a:1,a:1", "'a:1' is listed twice in 'a:1,a:1'"),
        ("Store:1,b:2,store:1", "'store:1' is listed twice"),
        ("[::1]:5,::1:5", "'::1:5' is listed twice"),
        ("a:1,nohost", "expected HOST:PORT, got 'nohost'"),
        ("a:1,b:99999", "expected HOST:PORT, got 'b:99999'"),
    ],
)
@pytest.mark.parametrize("source", ["flag", "env"])
def test_a_bad_store_list_exits_2_naming_the_flag_and_the_entry(value, problem, source, capsys):
    argv, env = (["--store", value], {}) if source == "flag" else ([], {"ACKBOT_BOT_STORE": value})
    with pytest.raises(SystemExit) as exit_info:
        load_config(argv, env)
    assert exit_info.value.code == 2
    named = "" if source == "flag" else "ACKBOT_BOT_STORE (environment): "
    assert f"argument --store: {named}{problem}" in capsys.readouterr().err


def test_the_same_port_on_another_host_is_another_store():
    assert load_config(["--store", "a:1,b:1"], {}).stores == ("a:1", "b:1")


def test_llm_settings():
    config = load_config(
        [
            "--backend=ollama",
            "--llm-url=http://127.0.0.1:11434",
            "--llm-model=qwen3:0.6b",
            "--llm-max-tokens=256",
            "--llm-temperature=0",
            "--llm-timeout-seconds=30",
            "--llm-thinking=off",
            "--system-prompt=You are {persona}.",
        ],
        {},
    )
    assert (config.backend, config.llm_model) == ("ollama", "qwen3:0.6b")
    assert config.llm_max_tokens == 256
    assert (config.llm_temperature, config.llm_timeout_seconds) == (0.0, 30.0)
    assert (config.llm_thinking, config.system_prompt) == ("off", "You are {persona}.")


@pytest.mark.parametrize(
    "argv",
    [
        ["--backend=llama"],
        ["--llm-max-tokens=0"],
        ["--llm-temperature=3"],
        ["--llm-timeout-seconds=0"],
        ["--llm-thinking=maybe"],
        ["--llm-no-think-params=[1]"],
        ["--llm-no-think-params={not json"],
    ],
)
def test_bad_llm_settings_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as caught:
        load_config(argv, {})
    assert caught.value.code == 2
    assert argv[0].split("=")[0] in capsys.readouterr().err


def test_the_api_key_is_no_flag_and_never_shown(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "1000")
    with pytest.raises(SystemExit):
        load_config(["--help"], {"ACKBOT_BOT_LLM_API_KEY": "sk-very-secret"})
    text = capsys.readouterr().out
    assert "sk-very-secret" not in text
    assert "--llm-api-key-file" in text
    assert "--llm-api-key " not in text
