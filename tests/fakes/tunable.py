"""An OpenAI-compatible fake whose speed and health a test changes while it runs:
`delay` holds each response's status line back that many seconds, `fail_status`
answers every request with that error status (0: answer normally)."""

from __future__ import annotations

from tests.fakes.http_server import FakeRequest, FakeResponse
from tests.fakes.openai_fake import OpenAIFake, OpenAIFakeConfig, error_body


class TunableOpenAI:
    def __init__(self, delay: float = 0.0) -> None:
        self.fake = OpenAIFake(OpenAIFakeConfig(auth="none"))
        self.delay = delay
        self.fail_status = 0

    def handle(self, request: FakeRequest) -> FakeResponse:
        if self.fail_status:
            body = error_body("The server had an error.", "server_error")
            return FakeResponse.json(body, self.fail_status)
        response = self.fake.handle(request)
        response.header_delay = self.delay
        return response
