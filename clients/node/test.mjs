// Run by tests/integration/test_node_client.py against a running gateway:
// GATEWAY_ADDRESS and GATEWAY_TOKEN come from the environment.
import assert from "node:assert/strict";
import { after, test } from "node:test";

import { connect, errorDetails, userMessage } from "./client.mjs";

const gateway = connect(process.env.GATEWAY_ADDRESS, process.env.GATEWAY_TOKEN);
after(() => gateway.close());

test("Chat returns the mock's echo with usage and route", async () => {
  const reply = await gateway.chat({ model: "mock", messages: [userMessage("hello from node")] });
  assert.deepEqual(reply.message.parts.map((p) => p.text), ["hello from node"]);
  assert.equal(reply.finish_reason, "FINISH_REASON_STOP");
  assert.equal(reply.usage.output_tokens, 3);
  assert.equal(reply.route.provider, "mock");
});

test("StreamChat delivers chunks in order, one finish reason, usage last", async () => {
  const chunks = [];
  for await (const chunk of gateway.streamChat({ model: "mock", messages: [userMessage("one two three")] })) {
    chunks.push(chunk);
  }
  assert.equal(chunks.map((c) => c.text_delta ?? "").join(""), "one two three");
  assert.deepEqual(chunks.filter((c) => c.finish_reason).map((c) => c.finish_reason), ["FINISH_REASON_STOP"]);
  assert.ok(chunks.at(-1).usage);
});

test("errors carry google.rpc details a Node caller can read", async () => {
  await assert.rejects(gateway.chat({ model: "no-such-model", messages: [userMessage("x")] }), (error) => {
    assert.equal(error.code, 5); // NOT_FOUND
    const details = errorDetails(error);
    assert.equal(details.ErrorInfo.reason, "MODEL_NOT_FOUND");
    assert.equal(details.ErrorInfo.domain, "llm-gateway.local");
    return true;
  });
  await assert.rejects(gateway.chat({ model: "mock", messages: [] }), (error) => {
    assert.equal(error.code, 3); // INVALID_ARGUMENT
    const details = errorDetails(error);
    assert.deepEqual(details.BadRequest.field_violations.map((v) => v.field), ["messages"]);
    return true;
  });
});

test("a caller without a token is refused", async () => {
  const anonymous = connect(process.env.GATEWAY_ADDRESS, "");
  try {
    await assert.rejects(anonymous.chat({ model: "mock", messages: [userMessage("x")] }), (error) => {
      assert.equal(error.code, 16); // UNAUTHENTICATED
      return true;
    });
  } finally {
    anonymous.close();
  }
});
