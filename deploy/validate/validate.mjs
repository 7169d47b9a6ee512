// Renders every overlay of deploy/kustomize with `kubectl kustomize`, validates each object
// against its schema (kubernetes-models for Kubernetes, the Prometheus Operator and the Gateway
// API; schemas/inferencepool-v1.json for the InferencePool), and checks the deltaserve
// Deployment against the server itself: every flag it passes exists (deltaserve --helpfull),
// container ports, probes, Service and InferencePool ports agree with the flags, the
// termination grace period covers preStop plus --shutdown-grace-seconds, a NetworkPolicy admits
// only named scrapers to the metrics port (its series name every tenant's variants), and the
// endpoint picker scrapes that port.
//   node validate.mjs SERVER_BINARY [OVERLAYS_DIR]   (exit 1 and one line per problem on failure)
import { execFileSync } from "node:child_process";
import { readdirSync, readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import * as yaml from "js-yaml";
import Ajv from "ajv";

const here = dirname(fileURLToPath(import.meta.url));
const serverBinary = process.argv[2];
const overlaysDir = process.argv[3] ?? join(here, "..", "kustomize", "overlays");
if (!serverBinary) {
  console.error("usage: node validate.mjs SERVER_BINARY [OVERLAYS_DIR]");
  process.exit(2);
}

const problems = [];
const problem = (where, what) => problems.push(`${where}: ${what}`);

// apiVersion -> module with the kinds of that group version.
const modules = {
  "v1": "kubernetes-models/v1",
  "apps/v1": "kubernetes-models/apps/v1",
  "policy/v1": "kubernetes-models/policy/v1",
  "autoscaling/v2": "kubernetes-models/autoscaling/v2",
  "rbac.authorization.k8s.io/v1": "kubernetes-models/rbac.authorization.k8s.io/v1",
  "networking.k8s.io/v1": "kubernetes-models/networking.k8s.io/v1",
  "monitoring.coreos.com/v1": "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1",
  "gateway.networking.k8s.io/v1": "@kubernetes-models/gateway-api/gateway.networking.k8s.io/v1",
};
const ajv = new Ajv({ allErrors: true });
const inferencePool = ajv.compile(JSON.parse(readFileSync(join(here, "schemas", "inferencepool-v1.json"), "utf8")));

async function validateObject(where, object) {
  if (object.apiVersion === "inference.networking.k8s.io/v1" && object.kind === "InferencePool") {
    if (!inferencePool(object)) problem(where, ajv.errorsText(inferencePool.errors));
    return;
  }
  if (object.kind === "Secret" && object.data) {
    // kustomize wraps long base64 values; the API server's decoder skips the newlines.
    object = { ...object, data: Object.fromEntries(Object.entries(object.data).map(([k, v]) => [k, v.replace(/\s/g, "")])) };
  }
  const path = modules[object.apiVersion];
  if (!path) return problem(where, `no schema for apiVersion ${object.apiVersion}`);
  const module = await import(path);
  const Model = module[object.kind];
  if (!Model) return problem(where, `no schema for ${object.apiVersion} ${object.kind}`);
  try {
    new Model(object).validate();
  } catch (error) {
    problem(where, `schema: ${error.message.split("\n").slice(0, 6).join(" ")}`);
  }
}

// absl exits with 1 after printing help.
let help;
try {
  help = execFileSync(serverBinary, ["--helpfull"], { encoding: "utf8", stdio: ["ignore", "pipe", "pipe"] });
} catch (error) {
  help = error.stdout ?? "";
}
const serverFlags = new Set([...help.matchAll(/^\s+--([a-z0-9_]+)/gm)].map((m) => m[1]));

function flagsOf(args) {
  const flags = new Map();
  for (const arg of args ?? []) {
    const match = /^--([a-z0-9_-]+)(?:=(.*))?$/.exec(arg);
    if (match) flags.set(match[1].replaceAll("-", "_"), match[2] ?? "true");
  }
  return flags;
}

// selectorMatches: whether a label selector (matchLabels and matchExpressions) selects `labels`.
function selectorMatches(selector, labels) {
  if (!selector) return false;
  for (const [key, value] of Object.entries(selector.matchLabels ?? {})) {
    if (labels[key] !== value) return false;
  }
  for (const { key, operator, values } of selector.matchExpressions ?? []) {
    const has = Object.prototype.hasOwnProperty.call(labels, key);
    if (operator === "In" && !(has && values.includes(labels[key]))) return false;
    if (operator === "NotIn" && has && values.includes(labels[key])) return false;
    if (operator === "Exists" && !has) return false;
    if (operator === "DoesNotExist" && has) return false;
  }
  return true;
}

// checkMetricsAccess: the metrics port is reachable only from named pods, and the endpoint
// picker (when there is an InferencePool) is one of them and scrapes it.
function checkMetricsAccess(where, objects, labels, flags) {
  const metricsPort = flags.get("metrics_port");
  const coversMetrics = (rule) => !rule.ports || rule.ports.some((p) => p.port === "metrics" || String(p.port) === metricsPort);
  const policies = objects.filter((o) => o.kind === "NetworkPolicy" && selectorMatches(o.spec.podSelector, labels) &&
                                         (o.spec.policyTypes ?? ["Ingress"]).includes("Ingress"));
  if (policies.length === 0) {
    problem(where, "no NetworkPolicy selects the server pods: every tenant could read the metrics port's variant names");
  }
  const metricsRules = policies.flatMap((p) => (p.spec.ingress ?? []).filter(coversMetrics));
  if (metricsRules.some((rule) => !rule.from || rule.from.length === 0)) {
    problem(where, "a NetworkPolicy rule admits any source to the metrics port, whose series name every tenant's variants");
  }
  if (!objects.some((o) => o.kind === "InferencePool")) return;
  const isPicker = (c) => (c.args ?? []).some((a) => a.startsWith("--pool-name="));
  const picker = objects.find((o) => o.kind === "Deployment" && o.spec.template.spec.containers.some(isPicker));
  if (!picker) return problem(where, "the InferencePool has no endpoint picker Deployment (a container with --pool-name)");
  const pickerFlags = flagsOf(picker.spec.template.spec.containers.find(isPicker).args);
  if (pickerFlags.get("model_server_metrics_port") !== metricsPort) {
    problem(where, `the endpoint picker must scrape --metrics-port (--model-server-metrics-port=${metricsPort}): ` +
                   "the API port's /metrics answers admins only");
  }
  if ((pickerFlags.get("model_server_metrics_path") ?? "/metrics") !== "/metrics/endpoint-picker") {
    problem(where, "the endpoint picker must read --model-server-metrics-path=/metrics/endpoint-picker (the vLLM-named gauges)");
  }
  const pickerLabels = picker.spec.template.metadata.labels ?? {};
  const admitsPicker = metricsRules.some((rule) => (rule.from ?? []).some(
      (peer) => !peer.namespaceSelector && !peer.ipBlock && selectorMatches(peer.podSelector, pickerLabels)));
  if (!admitsPicker) problem(where, "no NetworkPolicy rule admits the endpoint picker's pods to the metrics port");
}

function checkServer(where, objects, deployment) {
  const pod = deployment.spec.template.spec;
  const container = pod.containers.find((c) => c.name === "deltaserve");
  if (!container) return problem(where, "no container named deltaserve");
  const flags = flagsOf(container.args);
  for (const name of flags.keys()) {
    if (!serverFlags.has(name)) problem(where, `--${name.replaceAll("_", "-")} is not a flag of deltaserve`);
  }
  const ports = new Map((container.ports ?? []).map((p) => [p.name, p.containerPort]));
  const expectPort = (portName, flag) => {
    if (String(ports.get(portName)) !== flags.get(flag)) {
      problem(where, `container port "${portName}" (${ports.get(portName)}) differs from --${flag.replaceAll("_", "-")} ` +
                     `(${flags.get(flag)})`);
    }
  };
  expectPort("grpc", "port");
  expectPort("http", "http_port");
  expectPort("metrics", "metrics_port");
  expectPort("health", "health_port");
  for (const host of ["host", "metrics_host"]) {
    if (flags.get(host) !== "0.0.0.0") problem(where, `--${host} must be 0.0.0.0 for the kubelet and Services to reach it`);
  }
  for (const probe of ["startupProbe", "readinessProbe", "livenessProbe"]) {
    const port = container[probe]?.grpc?.port;
    if (String(port) !== flags.get("health_port")) problem(where, `${probe} must be a gRPC probe on --health-port`);
  }
  const preStop = container.lifecycle?.preStop?.exec?.command;
  const sleep = preStop?.[0] === "sleep" ? Number(preStop[1]) : NaN;
  if (!(sleep > 0)) problem(where, "preStop must sleep so endpoints drop the pod before SIGTERM");
  const grace = Number(flags.get("shutdown_grace_seconds") ?? 30);
  if (!(pod.terminationGracePeriodSeconds >= sleep + grace + 5)) {
    problem(where, `terminationGracePeriodSeconds ${pod.terminationGracePeriodSeconds} < preStop ${sleep} s + ` +
                   `--shutdown-grace-seconds ${grace} + 5 s to stop`);
  }
  const mounts = (container.volumeMounts ?? []).map((m) => m.mountPath);
  const volumes = new Set((pod.volumes ?? []).map((v) => v.name));
  for (const mount of container.volumeMounts ?? []) {
    if (!volumes.has(mount.name)) problem(where, `volumeMount ${mount.name} has no volume`);
  }
  for (const flag of ["data_dir", "shared_dir", "config", "model_dir"]) {
    const path = flags.get(flag);
    if (path && !mounts.some((m) => path === m || path.startsWith(m + "/"))) {
      problem(where, `--${flag.replaceAll("_", "-")}=${path} is not on a mounted volume`);
    }
  }
  const labels = deployment.spec.template.metadata.labels;
  const selects = (selector) => Object.entries(selector ?? {}).every(([k, v]) => labels[k] === v);
  checkMetricsAccess(where, objects, labels, flags);
  for (const object of objects) {
    if (object.kind === "Service" && selects(object.spec.selector)) {
      for (const port of object.spec.ports) {
        if (typeof port.targetPort === "string" && !ports.has(port.targetPort)) {
          problem(where, `Service ${object.metadata.name} targets port "${port.targetPort}", which the container lacks`);
        }
      }
    }
    if (object.kind === "InferencePool") {
      if (!selects(object.spec.selector.matchLabels)) problem(where, "the InferencePool does not select the server pods");
      if (!object.spec.targetPorts.some((p) => String(p.number) === flags.get("http_port"))) {
        problem(where, "the InferencePool's targetPorts must hold --http-port (the endpoint picker speaks OpenAI HTTP)");
      }
      if (flags.get("vllm_metrics") === "false") problem(where, "the endpoint picker's default metrics need --vllm-metrics");
    }
    if (object.kind === "ServiceMonitor") {
      const service = objects.find((o) => o.kind === "Service" && o.metadata.name === deployment.metadata.name);
      for (const endpoint of object.spec.endpoints) {
        if (!service?.spec.ports.some((p) => p.name === endpoint.port)) {
          problem(where, `ServiceMonitor port "${endpoint.port}" is not a port of Service ${deployment.metadata.name}`);
        }
      }
    }
    if (object.kind === "HorizontalPodAutoscaler" && object.spec.scaleTargetRef.name === deployment.metadata.name &&
        object.spec.maxReplicas > 1 && !flags.has("shared_dir")) {
      problem(where, "more than one replica needs --shared-dir (a ReadWriteMany volume) to share variants");
    }
  }
}

let count = 0;
for (const overlay of readdirSync(overlaysDir).sort()) {
  let rendered;
  try {
    rendered = execFileSync("kubectl", ["kustomize", join(overlaysDir, overlay)], {
      encoding: "utf8",
      stdio: ["ignore", "pipe", "pipe"],
    });
  } catch (error) {
    problem(overlay, `kubectl kustomize failed: ${error.stderr || error.message}`);
    continue;
  }
  const objects = yaml.loadAll(rendered).filter(Boolean);
  for (const object of objects) {
    const where = `${overlay}/${object.kind}/${object.metadata?.name}`;
    await validateObject(where, object);
    if (object.kind === "Deployment" && object.spec.template.spec.containers.some((c) => c.name === "deltaserve")) {
      checkServer(where, objects, object);
    }
    ++count;
  }
}
for (const line of problems) console.log(line);
console.log(`${count} objects checked, ${problems.length} problems`);
process.exit(problems.length === 0 ? 0 : 1);
