"""/v1/models (the synced catalog) and /v1/embeddings (pass-through) through the SDK."""

from __future__ import annotations

import openai
import pytest

from tests.mock_upstream import MockUpstream
from tests.openapi_schema import validate


def test_models_list_is_the_synced_catalog(client: openai.OpenAI, mock: MockUpstream) -> None:
    raw = client.models.with_raw_response.list()
    validate("ListModelsResponse", raw.http_response.json())
    ids = {m.id for m in raw.parse().data}
    assert ids == {m["id"] for m in mock.models}
    gpt = next(m for m in raw.http_response.json()["data"] if m["id"] == "mock/gpt")
    assert gpt["context_length"] == 8192 and gpt["pricing"]["prompt"]


def test_model_with_a_slash_in_its_id_is_retrieved(client: openai.OpenAI) -> None:
    model = client.models.retrieve("mock/gpt")
    assert model.id == "mock/gpt" and model.object == "model"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("mock/nope")


def test_embeddings_pass_through(client: openai.OpenAI, mock: MockUpstream, unique: str) -> None:
    raw = client.embeddings.with_raw_response.create(
        model=f"alt/emb-{unique}", input=["one", "two"], dimensions=4, encoding_format="float"
    )
    validate("CreateEmbeddingResponse", raw.http_response.json())
    result = raw.parse()
    assert [len(d.embedding) for d in result.data] == [4, 4]
    sent = mock.requests_for(f"emb-{unique}")[0].json
    assert sent["input"] == ["one", "two"] and sent["dimensions"] == 4
