// A small LLM Gateway client for Node.js: the contract loaded from protos/ at run time,
// a bearer token on every call, and the google.rpc error details decoded.
import path from "node:path";
import { fileURLToPath } from "node:url";

import grpc from "@grpc/grpc-js";
import protoLoader from "@grpc/proto-loader";
import protobuf from "protobufjs";

const here = path.dirname(fileURLToPath(import.meta.url));
const protos = path.resolve(here, "../../protos");

const definition = protoLoader.loadSync("llmgateway/v1/provider_service.proto", {
  includeDirs: [protos],
  keepCase: true,
  longs: Number,
  enums: String,
  defaults: false,
  oneofs: true,
});
const { llmgateway } = grpc.loadPackageDefinition(definition);

// google.rpc.Status and the error details the gateway sends in grpc-status-details-bin.
const rpc = protobuf.parse(`
  syntax = "proto3";
  package google.rpc;
  message Any { string type_url = 1; bytes value = 2; }
  message Status { int32 code = 1; string message = 2; repeated Any details = 3; }
  message ErrorInfo { string reason = 1; string domain = 2; map<string, string> metadata = 3; }
  message Duration { int64 seconds = 1; int32 nanos = 2; }
  message RetryInfo { Duration retry_delay = 1; }
  message FieldViolation { string field = 1; string description = 2; }
  message BadRequest { repeated FieldViolation field_violations = 1; }
`, { keepCase: true }).root;

export function errorDetails(error) {
  const raw = error.metadata?.get("grpc-status-details-bin")?.[0];
  if (!raw) return null;
  const status = rpc.lookupType("google.rpc.Status").decode(raw);
  const found = { code: status.code, message: status.message };
  for (const detail of status.details) {
    const name = detail.type_url.split("/").pop();
    const type = rpc.lookupType(name);
    found[name.replace("google.rpc.", "")] = type.toObject(type.decode(detail.value), {
      longs: Number,
    });
  }
  return found;
}

export function connect(address, token) {
  const client = new llmgateway.v1.ProviderService(address, grpc.credentials.createInsecure());
  const metadata = () => {
    const m = new grpc.Metadata();
    if (token) m.set("authorization", `Bearer ${token}`);
    return m;
  };
  const deadline = (seconds = 10) => new Date(Date.now() + seconds * 1000);
  return {
    chat: (request) =>
      new Promise((resolve, reject) =>
        client.Chat(request, metadata(), { deadline: deadline() }, (error, reply) =>
          error ? reject(error) : resolve(reply),
        ),
      ),
    streamChat: (request) => client.StreamChat(request, metadata(), { deadline: deadline() }),
    close: () => client.close(),
  };
}

export const userMessage = (text) => ({ role: "ROLE_USER", parts: [{ text }] });
