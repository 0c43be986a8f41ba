package deploy

import (
	"bytes"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"
)

// helmVersion is the Helm release the chart is rendered with. It is built
// from source with the Go toolchain (go install helm.sh/helm/v3/cmd/helm@…)
// and cached under the user cache directory, so only the first run pays for
// the build (about 2 minutes on 2 cores with a cold module cache).
const helmVersion = "v3.19.5"

var (
	helmOnce sync.Once
	helmPath string
	helmErr  error
)

func helmBinary(t testing.TB) string {
	t.Helper()
	helmOnce.Do(func() { helmPath, helmErr = buildHelm(t) })
	if helmErr != nil {
		t.Fatalf("helm %s: %v", helmVersion, helmErr)
	}
	return helmPath
}

func buildHelm(t testing.TB) (string, error) {
	cache, err := os.UserCacheDir()
	if err != nil {
		return "", err
	}
	dir := filepath.Join(cache, "pgsluice-test", "helm-"+helmVersion)
	bin := filepath.Join(dir, "helm")
	if _, err := os.Stat(bin); err == nil {
		return bin, nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	// Install into a private directory, then rename: a concurrent or
	// interrupted run never sees a half-written binary.
	tmp, err := os.MkdirTemp(dir, "build-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(tmp)
	start := time.Now()
	env := append(envWithout("GOFLAGS", "GOBIN", "CGO_ENABLED"), "GOBIN="+tmp, "CGO_ENABLED=0")
	out, err := runErr(tmp, env, "go", "install", "helm.sh/helm/v3/cmd/helm@"+helmVersion)
	if err != nil {
		return "", fmt.Errorf("go install helm.sh/helm/v3/cmd/helm@%s: %v\n%s", helmVersion, err, out)
	}
	t.Logf("built helm %s in %.1fs (cached at %s)", helmVersion, time.Since(start).Seconds(), bin)
	return bin, os.Rename(filepath.Join(tmp, "helm"), bin)
}

func chartDir(t testing.TB) string { return filepath.Join(repoRoot(t), "deploy", "helm", "pgsluice") }

// baseValues are the values every render needs (the chart requires them).
var baseValues = []string{"--set", "config.primary.host=pg-primary.db.svc", "--set", "auth.users[0].name=app", "--set", "auth.users[0].password=s3cret"}

func helmTemplate(t testing.TB, args ...string) (string, error) {
	t.Helper()
	all := append([]string{"template", "rel", chartDir(t), "--namespace", "db"}, args...)
	return runErr("", envWithout(), helmBinary(t), all...)
}

// k8sObject is one decoded manifest.
type k8sObject map[string]any

func (o k8sObject) kind() string { return fmt.Sprint(o["kind"]) }
func (o k8sObject) name() string { return fmt.Sprint(lookup(o, "metadata.name")) }

// parseManifests splits helm's output into documents and decodes each; every
// one must be a Kubernetes object (apiVersion, kind, metadata.name).
func parseManifests(t testing.TB, out string) map[string]k8sObject {
	t.Helper()
	objs := map[string]k8sObject{}
	dec := yaml.NewDecoder(strings.NewReader(out))
	for {
		// Decode into a plain map: yaml.v3 would give nested mappings the
		// named type too, and lookup expects map[string]any.
		var raw map[string]any
		err := dec.Decode(&raw)
		o := k8sObject(raw)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("helm output is not YAML: %v\n%s", err, out)
		}
		if o == nil {
			continue // empty document
		}
		if o["apiVersion"] == nil || o["kind"] == nil || lookup(o, "metadata.name") == nil {
			t.Errorf("not a Kubernetes object (apiVersion, kind, metadata.name): %v", o)
			continue
		}
		key := o.kind()
		if _, dup := objs[key]; dup {
			t.Errorf("two %s objects", key)
		}
		objs[key] = o
	}
	return objs
}

func TestHelmLint(t *testing.T) {
	out := run(t, "", envWithout(), helmBinary(t), append([]string{"lint", "--strict", chartDir(t)}, baseValues...)...)
	t.Log(out)
}

func TestHelmRenderDefaults(t *testing.T) {
	out, err := helmTemplate(t, baseValues...)
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	objs := parseManifests(t, out)
	want := []string{"ConfigMap", "Secret", "Service", "Deployment", "HorizontalPodAutoscaler", "PodDisruptionBudget"}
	for _, k := range want {
		if objs[k] == nil {
			t.Errorf("no %s rendered", k)
		}
	}
	if len(objs) != len(want) {
		t.Errorf("rendered %d objects, want %d (ServiceMonitor and PrometheusRule are off by default)", len(objs), len(want))
	}
}

func TestHelmRenderAll(t *testing.T) {
	out, err := helmTemplate(t, append(baseValues, "--set", "serviceMonitor.enabled=true", "--set", "prometheusRule.enabled=true",
		"--set", "config.replicas[0].host=pg-replica-0.db.svc", "--set", "config.replicas[0].port=5432")...)
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	objs := parseManifests(t, out)
	for k, apiVersion := range map[string]string{
		"ConfigMap": "v1", "Secret": "v1", "Service": "v1", "Deployment": "apps/v1",
		"HorizontalPodAutoscaler": "autoscaling/v2", "PodDisruptionBudget": "policy/v1",
		"ServiceMonitor": "monitoring.coreos.com/v1", "PrometheusRule": "monitoring.coreos.com/v1",
	} {
		o := objs[k]
		if o == nil {
			t.Errorf("no %s rendered", k)
			continue
		}
		if o["apiVersion"] != apiVersion {
			t.Errorf("%s apiVersion %v, want %s", k, o["apiVersion"], apiVersion)
		}
		if lookup(o, "metadata.labels") == nil {
			t.Errorf("%s has no labels", k)
		}
	}

	dep := objs["Deployment"]
	pod := lookup(dep, "spec.template.spec").(map[string]any)
	if lookup(pod, "securityContext.runAsNonRoot") != true {
		t.Errorf("pod securityContext.runAsNonRoot = %v, want true", lookup(pod, "securityContext.runAsNonRoot"))
	}
	if uid, _ := lookup(pod, "securityContext.runAsUser").(int); uid == 0 {
		t.Errorf("pod runAsUser %v: want the image's non-root uid", lookup(pod, "securityContext.runAsUser"))
	}
	containers := pod["containers"].([]any)
	if len(containers) != 1 {
		t.Fatalf("want one container, got %d", len(containers))
	}
	ctr := k8sObject(containers[0].(map[string]any))
	for path, want := range map[string]any{
		"livenessProbe.httpGet.path": "/healthz", "livenessProbe.httpGet.port": "admin",
		"readinessProbe.httpGet.path": "/readyz", "readinessProbe.httpGet.port": "admin",
		"securityContext.allowPrivilegeEscalation": false, "securityContext.readOnlyRootFilesystem": true,
	} {
		if got := lookup(ctr, path); got != want {
			t.Errorf("container %s = %v, want %v", path, got, want)
		}
	}
	ports := map[string]int{}
	for _, p := range ctr["ports"].([]any) {
		pm := p.(map[string]any)
		ports[fmt.Sprint(pm["name"])] = pm["containerPort"].(int)
	}
	if ports["postgres"] != 6432 || ports["admin"] != 9930 {
		t.Errorf("container ports %v, want postgres 6432 and admin 9930", ports)
	}
	if grace, _ := pod["terminationGracePeriodSeconds"].(int); grace <= 30 {
		t.Errorf("terminationGracePeriodSeconds %v must exceed shutdown_timeout (30s)", pod["terminationGracePeriodSeconds"])
	}
	if _, ok := dep["spec"].(map[string]any)["replicas"]; ok {
		t.Error("with autoscaling on, the Deployment must leave replicas to the HPA")
	}
	if lookup(dep, "spec.template.metadata.annotations") == nil {
		t.Error("no checksum annotations: config changes would not roll the pods")
	}

	// The Service selects the pods and names the ports the ServiceMonitor
	// and the probes use.
	sel := lookup(objs["Service"], "spec.selector").(map[string]any)
	podLabels := lookup(dep, "spec.template.metadata.labels").(map[string]any)
	for k, v := range sel {
		if podLabels[k] != v {
			t.Errorf("Service selector %s=%v does not match the pod labels", k, v)
		}
	}
	svcPorts := map[string]bool{}
	for _, p := range lookup(objs["Service"], "spec.ports").([]any) {
		svcPorts[fmt.Sprint(p.(map[string]any)["name"])] = true
	}
	ep := lookup(objs["ServiceMonitor"], "spec.endpoints").([]any)[0].(map[string]any)
	if !svcPorts[fmt.Sprint(ep["port"])] || ep["path"] != "/metrics" {
		t.Errorf("ServiceMonitor endpoint %v: want a Service port name and /metrics", ep)
	}
	if jl := lookup(objs["ServiceMonitor"], "spec.jobLabel"); jl == nil || lookup(objs["Service"], "metadata.labels").(map[string]any)[fmt.Sprint(jl)] != "pgsluice" {
		t.Errorf("ServiceMonitor jobLabel %v must give job=\"pgsluice\" (the alerts and dashboard use it)", jl)
	}
	if lookup(objs["HorizontalPodAutoscaler"], "spec.scaleTargetRef.name") != dep.name() {
		t.Error("HPA does not target the Deployment")
	}
	if lookup(objs["PodDisruptionBudget"], "spec.selector.matchLabels") == nil {
		t.Error("PDB selects nothing")
	}

	// PrometheusRule carries exactly deploy/prometheus/alerts.yml.
	var fileRules, chartRules map[string]any
	if err := yaml.Unmarshal(readFile(t, "deploy/prometheus/alerts.yml"), &fileRules); err != nil {
		t.Fatal(err)
	}
	chartRules = objs["PrometheusRule"]["spec"].(map[string]any)
	if !reflect.DeepEqual(fileRules, chartRules) {
		t.Errorf("PrometheusRule spec differs from deploy/prometheus/alerts.yml")
	}
	if !bytes.Equal(readFile(t, "deploy/prometheus/alerts.yml"), readFile(t, "deploy/helm/pgsluice/files/alerts.yml")) {
		t.Errorf("deploy/helm/pgsluice/files/alerts.yml is not a copy of deploy/prometheus/alerts.yml: cp deploy/prometheus/alerts.yml deploy/helm/pgsluice/files/")
	}

	// The rendered pgsluice.yaml plus the Secret's users, as the pod gets
	// them, load with the real binary.
	cfgText := fmt.Sprint(lookup(objs["ConfigMap"], "data").(map[string]any)["pgsluice.yaml"])
	users, err := base64.StdEncoding.DecodeString(fmt.Sprint(lookup(objs["Secret"], "data").(map[string]any)["users"]))
	if err != nil || string(users) != "app:s3cret" {
		t.Errorf("Secret users = %q, %v; want app:s3cret", users, err)
	}
	envName := fmt.Sprint(lookup(k8sObject(ctr["env"].([]any)[0].(map[string]any)), "name"))
	if envName != "PGSLUICE_AUTH_USERS" || lookup(k8sObject(ctr["env"].([]any)[0].(map[string]any)), "valueFrom.secretKeyRef.name") != objs["Secret"].name() {
		t.Errorf("container env %v: want PGSLUICE_AUTH_USERS from the Secret", ctr["env"])
	}
	file := filepath.Join(t.TempDir(), "pgsluice.yaml")
	if err := os.WriteFile(file, []byte(cfgText), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := fmt.Sprint(ctr["command"])
	args := ctr["args"].([]any)
	if cmd != "[/usr/local/bin/pgsluice]" || len(args) != 2 || args[1] != "/etc/pgsluice/pgsluice.yaml" {
		t.Errorf("container command %v args %v: want pgsluice --config /etc/pgsluice/pgsluice.yaml", cmd, args)
	}
	bin := pgsluiceBinary(t)
	c := entrypoint(t, bin, file, []string{"PGSLUICE_AUTH_USERS=" + string(users)}, "--config", file, "--print-config")
	out2, err := c.CombinedOutput()
	if err != nil {
		t.Fatalf("the chart's pgsluice.yaml does not load: %v\n%s\n---\n%s", err, out2, cfgText)
	}
	var cfg map[string]any
	if err := yaml.Unmarshal(out2, &cfg); err != nil {
		t.Fatal(err)
	}
	for path, want := range map[string]string{
		"primary.host": "pg-primary.db.svc", "listen": "0.0.0.0:6432", "admin.listen": "0.0.0.0:9930", "pool.size": "20",
	} {
		if got := fmt.Sprint(lookup(cfg, path)); got != want {
			t.Errorf("chart config %s = %s, want %s", path, got, want)
		}
	}
	if r, _ := cfg["replicas"].([]any); len(r) != 1 {
		t.Errorf("chart config replicas = %v, want the one set", cfg["replicas"])
	}
}

func TestHelmRejectsBadValues(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"no primary", []string{"--set", "auth.users[0].name=app", "--set", "auth.users[0].password=x"}, "config.primary.host is required"},
		{"no users", []string{"--set", "config.primary.host=db"}, "auth.users or auth.existingSecret is required"},
		{"comma in password", []string{"--set", "config.primary.host=db", "--set", "auth.users[0].name=app", "--set-string", `auth.users[0].password=a\,b`}, "must not contain ','"},
		{"trust needs no users", []string{"--set", "config.primary.host=db", "--set", "auth.method=trust"}, ""},
		{"existing secret", []string{"--set", "config.primary.host=db", "--set", "auth.existingSecret=mine"}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, err := helmTemplate(t, tc.args...)
			if tc.want == "" {
				if err != nil {
					t.Fatalf("%v\n%s", err, out)
				}
				objs := parseManifests(t, out)
				if tc.name == "existing secret" {
					if objs["Secret"] != nil {
						t.Error("chart created a Secret although auth.existingSecret is set")
					}
					if !strings.Contains(out, "name: mine") {
						t.Error("the Deployment does not read the existing Secret")
					}
				}
				return
			}
			if err == nil || !strings.Contains(out, tc.want) {
				t.Errorf("err=%v, output:\n%s\nwant a failure saying %q", err, out, tc.want)
			}
		})
	}
}

// TestHelmNotes renders NOTES.txt (helm template does not print it) by
// rendering a copy of the chart in which it is an ordinary template.
func TestHelmNotes(t *testing.T) {
	dst := filepath.Join(t.TempDir(), "pgsluice")
	if err := copyContext(chartDir(t), dst, nil); err != nil {
		t.Fatal(err)
	}
	notes, err := os.ReadFile(filepath.Join(dst, "templates", "NOTES.txt"))
	if err != nil {
		t.Fatal(err)
	}
	// helm parses every rendered template as YAML: wrap the notes in a
	// ConfigMap through a named template.
	body := "{{- define \"test.notes\" -}}\n" + string(notes) + "\n{{- end }}\n"
	wrapper := "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: notes\ndata:\n  notes: |\n    {{- include \"test.notes\" . | nindent 4 }}\n"
	for name, text := range map[string]string{"_test_notes.tpl": body, "test-notes.yaml": wrapper} {
		if err := os.WriteFile(filepath.Join(dst, "templates", name), []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	args := append([]string{"template", "rel", dst, "--namespace", "db", "--show-only", "templates/test-notes.yaml",
		"--set", "autoscaling.maxReplicas=5", "--set", "config.pool.size=30"}, baseValues...)
	out := run(t, "", envWithout(), helmBinary(t), args...)
	for _, want := range []string{"rel-pgsluice.db.svc:6432", "At 5 pods (autoscaling.maxReplicas) that is up to 150 connections", "5 x 30 x"} {
		if !strings.Contains(out, want) {
			t.Errorf("NOTES lacks %q:\n%s", want, out)
		}
	}
}
