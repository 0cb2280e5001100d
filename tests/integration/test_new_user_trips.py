"""What a new user and an operator tripped over (issue 21), against real processes: every error
is one line and an exit code, with a hint where gRPC's own words leave the user guessing, and
gRPC core writes nothing of its own into a JSON log or before the CLI's error."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import trustme

from ackbot.client import Client
from ackbot.client.errors import StoreError
from ackbot.common.limits import DEFAULT_MAX_TEXT_BYTES
from ackbot.testing import Security, child_env, store_service

CLI_TIMEOUT = 30


def cli(*args: str | bytes, stdin: bytes | None = None, env: dict[str, str] | None = None):
    return subprocess.run(
        [sys.executable, "-m", "ackbot.cli", *args],
        input=stdin,
        stdin=None if stdin is not None else subprocess.DEVNULL,
        capture_output=True,
        timeout=CLI_TIMEOUT,
        env=child_env(env),
        check=False,
    )


def one_error_line(result: subprocess.CompletedProcess[bytes]) -> str:
    err = result.stderr.decode()
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    return lines[0]


def usage_error(result: subprocess.CompletedProcess[bytes]) -> str:
    """argparse's usage lines, then one `ackbot: error: ...` line, exit 2."""
    assert result.returncode == 2, result
    err = result.stderr.decode()
    assert "Traceback" not in err, err
    return err.splitlines()[-1]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# -- item 3: no traceback on user input --------------------------------------------------------


def test_an_argument_that_is_not_utf8_is_a_usage_error():
    assert "TEXT is not valid UTF-8" in usage_error(cli(b"post", b"caf\xe9"))
    assert "--author is not valid UTF-8" in usage_error(cli("post", "x", b"--author", b"\xff"))


def test_standard_input_that_is_not_utf8_is_one_line(store):
    result = cli("--store", store.address, "post", "-", stdin=b"caf\xe9\n")
    assert result.returncode == 2
    assert "standard input is not UTF-8" in one_error_line(result)


def test_a_create_time_out_of_range_is_a_usage_error():
    line = usage_error(cli("post", "x", "--create-time-ms", "99999999999999999"))
    assert "--create-time-ms: must be between" in line


def test_completion_into_a_closed_pipe_says_nothing(tmp_path):
    err = tmp_path / "err"
    command = f"{sys.executable} -m ackbot.cli completion bash 2>{err} | head -1 >/dev/null"
    subprocess.run(["sh", "-c", command], env=child_env(), timeout=CLI_TIMEOUT, check=True)
    assert err.read_text() == ""


# -- item 4: post - stops reading at the limit ----------------------------------------------


def test_post_stdin_stops_reading_at_the_text_limit(store):
    proc = subprocess.Popen(
        [sys.executable, "-m", "ackbot.cli", "--store", store.address, "post", "-"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=child_env(),
    )
    assert proc.stdin is not None
    # Over the limit, and standard input left open: a reader of all of it would wait forever.
    proc.stdin.write(b"a" * (DEFAULT_MAX_TEXT_BYTES + 100))
    proc.stdin.flush()
    try:
        _, err = proc.communicate(timeout=CLI_TIMEOUT)
    finally:
        proc.kill()
    assert proc.returncode == 2
    assert f"over {DEFAULT_MAX_TEXT_BYTES} bytes" in err.decode()
    assert "--max-text-bytes" in err.decode()
    assert "--max-request-bytes" in err.decode()


def test_a_request_over_the_stores_request_limit_names_it(store):
    text = b"a" * 70_000
    result = cli("--store", store.address, "post", "-", "--max-text-bytes", "100000", stdin=text)
    assert result.returncode == 1
    line = one_error_line(result)
    assert line.startswith("error: RESOURCE_EXHAUSTED")
    assert "--max-request-bytes" in line


# -- item 5: errors that say what to check ---------------------------------------------------


def test_no_store_running_names_the_flag_and_the_variable():
    result = cli("--store", f"127.0.0.1:{free_port()}", "list")
    assert result.returncode == 1
    line = one_error_line(result)
    assert line.startswith("error: UNAVAILABLE")
    assert "--store" in line
    assert "ACKBOT_STORE_ADDRESS" in line


def test_wait_out_of_range_says_the_range_plainly():
    line = usage_error(cli("post", "x", "--wait", "-1"))
    assert "must be more than 0 and at most 3600, got -1" in line


async def test_the_client_library_does_not_warn_on_each_retry(caplog):
    caplog.set_level(logging.DEBUG)
    async with Client.connect(f"127.0.0.1:{free_port()}", retry_budget_seconds=1.0) as client:
        with pytest.raises(StoreError):
            await client.get("anything")
    retries = [record for record in caplog.records if "failed on" in record.getMessage()]
    assert retries, "each retry is still logged, at DEBUG"
    assert all(record.levelno == logging.DEBUG for record in retries)


# -- item 6: post --json keeps already_existed ------------------------------------------------


def test_post_json_says_whether_it_already_existed(store):
    first = cli("--store", store.address, "--json", "post", "hi", "--id", "once")
    again = cli("--store", store.address, "--json", "post", "hi", "--id", "once")
    assert json.loads(first.stdout)["already_existed"] is False
    assert json.loads(again.stdout)["already_existed"] is True
    assert json.loads(again.stdout)["id"] == "once"


# -- items 2 and 5: TLS failures --------------------------------------------------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("pki")
    ca, other = trustme.CA(), trustme.CA()
    leaf = ca.issue_cert("localhost", "127.0.0.1")
    files = {
        "ca": folder / "ca.pem",
        "other": folder / "other-ca.pem",
        "cert": folder / "cert.pem",
        "key": folder / "key.pem",
    }
    ca.cert_pem.write_to_path(files["ca"])
    other.cert_pem.write_to_path(files["other"])
    leaf.cert_chain_pems[0].write_to_path(files["cert"])
    leaf.private_key_pem.write_to_path(files["key"])
    return files


async def test_tls_failures_leave_every_json_log_line_json_and_one_cli_line(pki, tmp_path):
    security = Security(ca=pki["ca"], cert=pki["cert"], key=pki["key"])
    store = store_service(
        tmp_path, name="tls-store", security=security, args=["--log-format", "json"]
    )
    try:
        await store.astart()
        # A plaintext client: the store's handshake fails ("Socket closed" for the client).
        plain = await asyncio.to_thread(cli, "--store", store.address, "list")
        assert plain.returncode == 1
        assert "--tls-ca" in one_error_line(plain)
        # The wrong CA: the client's handshake fails.
        wrong = await asyncio.to_thread(
            cli, "--store", store.address, "--tls-ca", str(pki["other"]), "list"
        )
        assert wrong.returncode == 1
        assert "TLS handshake failed" in one_error_line(wrong)
        # A call that gets through, after the failed ones, before the log is read.
        good = await asyncio.to_thread(
            cli, "--store", store.address, "--tls-ca", str(pki["ca"]), "list"
        )
        assert good.returncode == 0, good
        assert await store.aterminate() == 0
        lines = [line for line in store.log_text().splitlines() if line.strip()]
        assert lines
        for line in lines:
            json.loads(line)  # every line of the log is JSON
    finally:
        store.cleanup()


# -- item 6: the README's jq examples work ------------------------------------------------------

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_json_examples() -> list[str]:
    block = README.read_text().split("<!-- json-examples -->", 1)[1]
    body = block.split("```sh", 1)[1].split("```", 1)[0]
    return [line.strip() for line in body.splitlines() if line.strip()]


def test_the_readmes_jq_examples_work(store):
    examples = readme_json_examples()
    assert len(examples) == 4
    env = child_env(
        {
            "ACKBOT_STORE_ADDRESS": store.address,
            "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin",
        }
    )
    outputs = []
    for example in examples:
        result = subprocess.run(
            ["bash", "-o", "pipefail", "-c", example],
            capture_output=True,
            text=True,
            timeout=CLI_TIMEOUT,
            env=env,
            check=False,
        )
        assert result.returncode == 0, (example, result.stderr)
        assert "error" not in result.stderr, (example, result.stderr)
        outputs.append(result.stdout.strip())
    dead, age, dead_ids, existed = outputs
    assert dead == "0"
    assert float(age) >= 0
    assert dead_ids == ""
    assert existed == "false"
