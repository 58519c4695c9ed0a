"""``server.tls``: the gateway serves HTTPS with a self-signed certificate made here by
openssl; the openai client trusting that certificate gets answers, plain HTTP and clients
that do not trust it get none. `check` refuses unusable certificate files."""

from __future__ import annotations

import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
import yaml

from llmgw.checks import check_tls
from llmgw.config import ConfigError, GatewayConfig
from tests.support import Server, check_like_llmgw, free_port


def self_signed(tmp: Path, name: str = "gw") -> tuple[Path, Path]:
    cert, key = tmp / f"{name}.crt", tmp / f"{name}.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1", "-subj",
                    "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    return cert, key


@pytest.fixture(scope="module")
def https_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Path]]:
    tmp = tmp_path_factory.mktemp("tls")
    cert, key = self_signed(tmp)
    port = free_port()
    path = tmp / "tls.yaml"
    path.write_text(yaml.safe_dump({
        "server": {"port": port, "tls": {"cert": str(cert), "key": str(key)}},
        "models": [{"name": "m", "engine": "fake", "model": "fake", "replicas": 1}]}))
    check_like_llmgw([path])
    server = Server([sys.executable, "-m", "llmgw", "up", str(path)], port, "/ready",
                    timeout_s=60, tls=ssl.create_default_context(cafile=str(cert)))
    yield server, cert
    server.stop()


def test_https_with_the_gateways_certificate(https_gateway: tuple[Server, Path]) -> None:
    server, cert = https_gateway
    assert server.url.startswith("https://")
    trusting = httpx.Client(verify=ssl.create_default_context(cafile=str(cert)))
    with openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0,
                       http_client=trusting) as client:
        answer = client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "hi"}], max_tokens=3)
    assert answer.choices[0].message.content
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(server.url + "/health")  # the system's CAs do not know it
    with pytest.raises(httpx.HTTPError):  # plain HTTP on the TLS port: no answer
        httpx.get(server.url.replace("https://", "http://") + "/health")


def test_check_refuses_unusable_certificates(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path, "a")
    other_cert, _ = self_signed(tmp_path, "b")

    def config(cert: Path, key: Path) -> GatewayConfig:
        return GatewayConfig.model_validate({
            "server": {"tls": {"cert": str(cert), "key": str(key)}},
            "models": [{"name": "m", "engine": "fake", "model": "fake", "replicas": 1}]})

    check_tls(config(cert, key))
    with pytest.raises(ConfigError, match="server.tls.key: .* is not a readable file"):
        check_tls(config(cert, tmp_path / "missing.key"))
    with pytest.raises(ConfigError, match="cannot be used together"):
        check_tls(config(other_cert, key))
