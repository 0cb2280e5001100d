"""The server's certificate files, re-read when they change (serving.CertificateFiles)."""

from __future__ import annotations

import os

import pytest
import trustme

from ackbot.common.serving import CertificateFiles


def _write(leaf: trustme.LeafCert, cert, key) -> None:
    leaf.cert_chain_pems[0].write_to_path(str(cert))
    leaf.private_key_pem.write_to_path(str(key))


def _touch_later(path) -> None:
    # Some file systems keep coarse times: make the change visible whatever their resolution.
    info = os.stat(path)
    os.utime(path, ns=(info.st_atime_ns, info.st_mtime_ns + 2_000_000_000))


def test_unchanged_files_keep_their_configuration_and_changed_ones_load_again(tmp_path):
    ca = trustme.CA()
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    _write(ca.issue_cert("localhost"), cert, key)
    files = CertificateFiles(str(cert), str(key))
    assert files.load() is not None
    assert files.fetch() is None

    _write(ca.issue_cert("localhost"), cert, key)
    _touch_later(cert)
    _touch_later(key)
    assert files.fetch() is not None
    assert files.reloads == 1
    assert files.fetch() is None


def test_a_key_of_another_certificate_is_refused_and_the_old_pair_kept(tmp_path, caplog):
    ca = trustme.CA()
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    _write(ca.issue_cert("localhost"), cert, key)
    files = CertificateFiles(str(cert), str(key))
    ca.issue_cert("localhost").private_key_pem.write_to_path(str(key))
    _touch_later(key)
    assert files.fetch() is None
    assert files.reloads == 0
    assert "cannot be used yet" in caplog.text
    with pytest.raises(OSError, match="is not the key of --tls-cert"):
        files.load()


def test_a_missing_file_names_its_flag(tmp_path):
    files = CertificateFiles(str(tmp_path / "nope.pem"), str(tmp_path / "nope.key"))
    with pytest.raises(OSError, match="--tls-key: cannot read"):
        files.load()
