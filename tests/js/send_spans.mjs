// One GenAI-convention trace sent by the OpenTelemetry JavaScript SDK to persona-exporter.
// Usage: node send_spans.mjs <url> <json|protobuf> [token]
// Prints {"results": [<ExportResultCode>...]} (0 success, 1 failure) on stdout.
import { context, trace, SpanKind, SpanStatusCode } from "@opentelemetry/api";
import { BasicTracerProvider, SimpleSpanProcessor } from "@opentelemetry/sdk-trace-base";
import { resourceFromAttributes } from "@opentelemetry/resources";
import { OTLPTraceExporter as JsonExporter } from "@opentelemetry/exporter-trace-otlp-http";
import { OTLPTraceExporter as ProtoExporter } from "@opentelemetry/exporter-trace-otlp-proto";

const [url, protocol, token] = process.argv.slice(2);
const headers = token ? { Authorization: `Bearer ${token}` } : {};
const Exporter = protocol === "protobuf" ? ProtoExporter : JsonExporter;
const exporter = new Exporter({ url, headers });
const results = [];
const exportOnce = exporter.export.bind(exporter);
exporter.export = (spans, done) => exportOnce(spans, (result) => {
  results.push(result.code);
  done(result);
});

const provider = new BasicTracerProvider({
  resource: resourceFromAttributes({ "service.name": `js-agents-${protocol}` }),
  spanProcessors: [new SimpleSpanProcessor(exporter)],
});
const tracer = provider.getTracer("persona-exporter-js-test");

// The GenAI semantic conventions (semantic-conventions-genai model/gen-ai/spans.yaml):
// an invoke_agent span naming the agent, over two inference spans with usage; the second
// fails. The persona is the agent's name, as the note's default precedence reads it.
const start = Date.now() - 3000;
const agent = tracer.startSpan("invoke_agent backend-engineer", {
  kind: SpanKind.INTERNAL, startTime: start,
  attributes: { "gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": "backend-engineer",
                "chatmode": "feature-implementation" },
});
const inside = trace.setSpan(context.active(), agent);
const chat = tracer.startSpan("chat gpt-4o", {
  kind: SpanKind.CLIENT, startTime: start + 100,
  attributes: { "gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai",
                "gen_ai.request.model": "gpt-4o", "gen_ai.response.model": "gpt-4o-2024-08-06",
                "gen_ai.usage.input_tokens": 1200, "gen_ai.usage.output_tokens": 300,
                "gen_ai.usage.cache_read.input_tokens": 200,
                "gen_ai.response.id": `chatcmpl-${protocol}-1` },
}, inside);
chat.end(start + 1100);
const failed = tracer.startSpan("chat gpt-4o", {
  kind: SpanKind.CLIENT, startTime: start + 1200,
  attributes: { "gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai",
                "gen_ai.request.model": "gpt-4o", "error.type": "RateLimitError" },
}, inside);
failed.setStatus({ code: SpanStatusCode.ERROR, message: "429 Too Many Requests" });
failed.end(start + 1500);
agent.end(start + 2000);

await provider.forceFlush();
await provider.shutdown();
process.stdout.write(JSON.stringify({ results }) + "\n");
