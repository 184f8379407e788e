import json
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from memory import embedder
from memory.embedder import (
    Embedder,
    EmbedderError,
    LocalMiniLM,
    OpenAIEmbedder,
    build_embedder,
)

API_KEY = "sk-test-very-secret-key"
DIM = 4


@pytest.fixture(scope="module")
def minilm() -> LocalMiniLM:
    return LocalMiniLM()


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b)


def test_local_vectors_are_unit_length_float32_rows(minilm: LocalMiniLM) -> None:
    vectors = minilm.embed(["hello", "a longer sentence about memory", ""])
    assert vectors.dtype == np.float32
    assert vectors.shape == (3, 384) == (3, minilm.dim)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_similar_sentences_score_higher_than_unrelated(minilm: LocalMiniLM) -> None:
    cat, kitten, revenue = minilm.embed(
        ["The cat sits on the mat", "A cat is sitting on a mat", "Quarterly revenue grew 5%"]
    )
    assert cosine(cat, kitten) > 0.8
    assert cosine(cat, kitten) - cosine(cat, revenue) > 0.5


def test_a_text_gets_the_same_vector_whatever_it_is_embedded_with(minilm: LocalMiniLM) -> None:
    texts = ["a much longer text " * 20, "short", "medium length text here", "x", "the end"]
    together = minilm.embed(texts)
    alone = np.vstack([minilm.embed([text]) for text in texts])
    np.testing.assert_array_equal(together, alone)
    assert len({row.tobytes() for row in together}) == len(texts)


def test_the_quantised_model_is_built_once_and_a_damaged_build_is_replaced(
    tmp_path: Path, minilm: LocalMiniLM
) -> None:
    model = embedder.quantized_model(tmp_path)
    assert model.parent == tmp_path and model.stat().st_size > 10_000_000
    built_at = model.stat().st_mtime_ns
    assert embedder.quantized_model(tmp_path) == model
    assert model.stat().st_mtime_ns == built_at
    assert [p.name for p in tmp_path.iterdir()] == [model.name]  # no scratch left behind
    model.write_bytes(b"not a model")
    with pytest.raises(EmbedderError, match="does not load"):
        LocalMiniLM(model_dir=tmp_path)
    assert not model.exists()
    rebuilt = LocalMiniLM(model_dir=tmp_path)  # the same build, so the same vectors
    sentence = ["the same sentence, the same vector"]
    np.testing.assert_array_equal(rebuilt.embed(sentence), minilm.embed(sentence))


def test_long_text_is_truncated_not_rejected(minilm: LocalMiniLM) -> None:
    long_text = "memory " * 2000
    assert minilm.embed([long_text]).shape == (1, 384)


def test_empty_input_gives_zero_rows(minilm: LocalMiniLM) -> None:
    assert minilm.embed([]).shape == (0, 384)
    remote = OpenAIEmbedder(base_url="http://127.0.0.1:9", api_key="k", model="m", dim=DIM)
    assert remote.embed([]).shape == (0, DIM)  # and no request made: nothing listens on :9


def test_a_single_str_is_rejected(minilm: LocalMiniLM) -> None:
    with pytest.raises(TypeError):
        minilm.embed("not a list")


def test_tampered_tokenizer_fails_its_checksum(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tampered = tmp_path / "tokenizer.json"
    tampered.write_bytes(embedder.TOKENIZER_FILE.read_bytes().replace(b'"[PAD]"', b'"[PAD ]"'))
    monkeypatch.setattr(embedder, "TOKENIZER_FILE", tampered)
    with pytest.raises(EmbedderError, match="sha256"):
        LocalMiniLM()


def test_build_embedder_makes_each_kind() -> None:
    remote: Embedder = build_embedder(
        "openai", base_url="http://127.0.0.1:9/v1", api_key="", model="m", dim=DIM
    )
    assert isinstance(remote, OpenAIEmbedder)
    assert (remote.name, remote.dim) == ("m", DIM)
    with pytest.raises(ValueError, match="unknown embedder kind"):
        build_embedder("word2vec")


@dataclass
class FakeEmbeddings:
    """A real HTTP server on 127.0.0.1 answering /v1/embeddings with vectors out of order."""

    base_url: str = ""
    status: int = 200
    dim: int = DIM
    requests: list[tuple[dict[str, str], dict[str, Any]]] = field(default_factory=list)


def vector_for(text: str, dim: int = DIM) -> list[float]:
    return [float(len(text)), 1.0, 2.0, 3.0][:dim] + [0.5] * (dim - DIM)


def expected_rows(texts: list[str]) -> Any:
    raw = np.array([vector_for(text) for text in texts], dtype=np.float32)
    return raw / np.linalg.norm(raw, axis=1, keepdims=True)


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeEmbeddings]:
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    state = FakeEmbeddings()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            state.requests.append((dict(self.headers), body))
            reply: dict[str, Any]
            if state.status != 200:
                reply = {"error": {"message": f"Incorrect API key provided: {API_KEY}"}}
            else:
                rows = [
                    {"object": "embedding", "index": i, "embedding": vector_for(text, state.dim)}
                    for i, text in enumerate(body["input"])
                ]
                reply = {"object": "list", "data": rows[::-1], "model": body["model"]}
            payload = json.dumps(reply).encode()
            self.send_response(state.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state.base_url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    yield state
    server.shutdown()
    server.server_close()
    thread.join()


def remote(fake: FakeEmbeddings, **opts: Any) -> OpenAIEmbedder:
    return OpenAIEmbedder(
        base_url=fake.base_url, api_key=API_KEY, model="text-embedding-test", dim=DIM, **opts
    )


def test_remote_rows_come_back_in_input_order_and_normalised(fake: FakeEmbeddings) -> None:
    texts = ["a", "bbbb", "cc"]
    vectors = remote(fake).embed(texts)
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(vectors, expected_rows(texts), rtol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-6)


def test_remote_sends_the_bearer_key_and_model(fake: FakeEmbeddings) -> None:
    remote(fake).embed(["hello"])
    [(headers, body)] = fake.requests
    assert headers["Authorization"] == f"Bearer {API_KEY}"
    assert body == {"model": "text-embedding-test", "input": ["hello"]}


def test_remote_requests_are_batched(fake: FakeEmbeddings) -> None:
    texts = ["a", "bb", "ccc", "dddd", "eeeee"]
    vectors = remote(fake, batch_size=2).embed(texts)
    assert [body["input"] for _, body in fake.requests] == [["a", "bb"], ["ccc", "dddd"], ["eeeee"]]
    np.testing.assert_allclose(vectors, expected_rows(texts), rtol=1e-6)


def test_http_500_raises_embedder_error_without_the_key(fake: FakeEmbeddings) -> None:
    fake.status = 500
    with pytest.raises(EmbedderError, match="HTTP 500") as caught:
        remote(fake).embed(["hello"])
    assert API_KEY not in str(caught.value)
    assert "Incorrect API key provided: ***" in str(caught.value)


def test_wrong_dimension_raises_embedder_error(fake: FakeEmbeddings) -> None:
    fake.dim = DIM + 2
    with pytest.raises(EmbedderError, match="dim 4"):
        remote(fake).embed(["hello"])


def test_unreachable_server_raises_embedder_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    closed = OpenAIEmbedder(
        base_url=f"http://127.0.0.1:{port}/v1", api_key=API_KEY, model="m", dim=DIM, timeout=2
    )
    with pytest.raises(EmbedderError, match="failed") as caught:
        closed.embed(["hello"])
    assert API_KEY not in str(caught.value)


def test_non_http_base_url_is_refused() -> None:
    with pytest.raises(ValueError, match="http"):
        OpenAIEmbedder(base_url="file:///etc", api_key="", model="m", dim=DIM)
