package keystone

import (
	"context"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gophercloud/gophercloud/v2"
)

// keystoneDouble is a minimal Keystone v3: GET / (version discovery),
// POST /v3/auth/tokens (password method), and a service at /svc/ that
// accepts only the newest token.
type keystoneDouble struct {
	t   *testing.T
	srv *httptest.Server

	mu         sync.Mutex
	authBodies []map[string]any
	tokens     int    // tokens issued
	valid      string // the token the service accepts
	svcTokens  []string
	discovered int
}

func newKeystoneDouble(t *testing.T) *keystoneDouble {
	k := &keystoneDouble{t: t}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", k.versions)
	mux.HandleFunc("POST /v3/auth/tokens", k.issue)
	mux.HandleFunc("/svc/", k.service)
	k.srv = httptest.NewServer(mux)
	t.Cleanup(k.srv.Close)
	return k
}

func (k *keystoneDouble) versions(w http.ResponseWriter, r *http.Request) {
	k.mu.Lock()
	k.discovered++
	k.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusMultipleChoices)
	fmt.Fprintf(w, `{"versions":{"values":[{"id":"v3.14","status":"stable","links":[{"rel":"self","href":"%s/v3/"}]}]}}`, k.srv.URL)
}

func (k *keystoneDouble) issue(w http.ResponseWriter, r *http.Request) {
	var body map[string]any
	if err := json.NewDecoder(r.Body).Decode(&body); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	pw, _ := dig(body, "auth", "identity", "password", "user", "password").(string)
	if pw != "secret" {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusUnauthorized)
		fmt.Fprint(w, `{"error":{"code":401,"title":"Unauthorized","message":"The request you have made requires authentication."}}`)
		return
	}
	k.mu.Lock()
	k.authBodies = append(k.authBodies, body)
	k.tokens++
	tok := fmt.Sprintf("tok-%d", k.tokens)
	k.valid = tok
	k.mu.Unlock()

	u := k.srv.URL
	catalog := []map[string]any{
		{"type": "identity", "name": "keystone", "id": "1", "endpoints": []map[string]any{
			{"id": "i1", "interface": "public", "region": "RegionOne", "region_id": "RegionOne", "url": u + "/v3"},
		}},
		{"type": "placement", "name": "placement", "id": "2", "endpoints": []map[string]any{
			{"id": "p1", "interface": "public", "region": "RegionOne", "region_id": "RegionOne", "url": u + "/svc/public"},
			{"id": "p2", "interface": "internal", "region": "RegionOne", "region_id": "RegionOne", "url": u + "/svc/internal"},
			{"id": "p3", "interface": "public", "region": "RegionTwo", "region_id": "RegionTwo", "url": u + "/svc/r2-public/"},
		}},
		{"type": "network", "name": "neutron", "id": "3", "endpoints": []map[string]any{
			{"id": "n1", "interface": "admin", "region": "RegionOne", "region_id": "RegionOne", "url": u + "/svc/net-admin"},
		}},
	}
	resp := map[string]any{"token": map[string]any{
		"methods":    []string{"password"},
		"expires_at": time.Now().Add(time.Hour).UTC().Format("2006-01-02T15:04:05.000000Z"),
		"issued_at":  time.Now().UTC().Format("2006-01-02T15:04:05.000000Z"),
		"user":       map[string]any{"id": "u1", "name": "nova", "domain": map[string]any{"id": "default", "name": "Default"}},
		"project":    map[string]any{"id": "p1", "name": "service", "domain": map[string]any{"id": "default", "name": "Default"}},
		"catalog":    catalog,
	}}
	w.Header().Set("X-Subject-Token", tok)
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusCreated)
	_ = json.NewEncoder(w).Encode(resp)
}

func (k *keystoneDouble) service(w http.ResponseWriter, r *http.Request) {
	tok := r.Header.Get("X-Auth-Token")
	k.mu.Lock()
	k.svcTokens = append(k.svcTokens, tok)
	ok := tok == k.valid
	k.mu.Unlock()
	if !ok {
		http.Error(w, `{"error":"bad token"}`, http.StatusUnauthorized)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	fmt.Fprintf(w, `{"path":%q}`, r.URL.Path)
}

// expire makes the service reject every token issued so far.
func (k *keystoneDouble) expire() {
	k.mu.Lock()
	k.valid = "none-yet"
	k.mu.Unlock()
}

func dig(m map[string]any, keys ...string) any {
	var cur any = m
	for _, key := range keys {
		mm, ok := cur.(map[string]any)
		if !ok {
			return nil
		}
		cur = mm[key]
	}
	return cur
}

func get(t *testing.T, sc *gophercloud.ServiceClient, path string) string {
	t.Helper()
	var out struct{ Path string }
	if _, err := sc.Get(context.Background(), sc.ServiceURL(path), &out, nil); err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	return out.Path
}

func passwordOptions(k *keystoneDouble) Options {
	return Options{
		AuthType:          "password",
		AuthURL:           k.srv.URL,
		Username:          "nova",
		Password:          "secret",
		UserDomainName:    "Default",
		ProjectName:       "service",
		ProjectDomainName: "Default",
		RegionName:        "RegionOne",
	}
}

func TestPasswordCatalog(t *testing.T) {
	k := newKeystoneDouble(t)
	sc, err := NewServiceClient(context.Background(), passwordOptions(k), "placement")
	if err != nil {
		t.Fatal(err)
	}
	// The default valid_interfaces put internal first.
	if want := k.srv.URL + "/svc/internal/"; sc.Endpoint != want {
		t.Fatalf("endpoint %q, want %q", sc.Endpoint, want)
	}
	if k.discovered != 1 {
		t.Errorf("version discovery requests: %d, want 1 (versionless auth_url)", k.discovered)
	}
	if p := get(t, sc, "resource_providers"); p != "/svc/internal/resource_providers" {
		t.Errorf("service path %q", p)
	}
	if p := get(t, sc, "traits"); p != "/svc/internal/traits" {
		t.Errorf("service path %q", p)
	}
	if k.tokens != 1 {
		t.Errorf("tokens issued: %d, want 1 (the token is reused)", k.tokens)
	}
	b := k.authBodies[0]
	if got := dig(b, "auth", "identity", "password", "user", "name"); got != "nova" {
		t.Errorf("user name %v", got)
	}
	if got := dig(b, "auth", "identity", "password", "user", "domain", "name"); got != "Default" {
		t.Errorf("user domain %v", got)
	}
	if got := dig(b, "auth", "scope", "project", "name"); got != "service" {
		t.Errorf("project %v", got)
	}
	if got := dig(b, "auth", "scope", "project", "domain", "name"); got != "Default" {
		t.Errorf("project domain %v", got)
	}
	if got := sc.UserAgent.Join(); !strings.HasPrefix(got, "lxc-agent") {
		t.Errorf("user agent %q", got)
	}
}

func TestV3PasswordInterfacesRegionIDs(t *testing.T) {
	k := newKeystoneDouble(t)
	o := passwordOptions(k)
	o.AuthType = "v3password"
	o.AuthURL = k.srv.URL + "/v3"
	o.ValidInterfaces = []string{"publicURL"}
	o.RegionName = "RegionTwo"
	o.UserID, o.Username, o.UserDomainName = "u1", "", ""
	o.ProjectID, o.ProjectName, o.ProjectDomainName = "p1", "", ""
	sc, err := NewServiceClient(context.Background(), o, "placement")
	if err != nil {
		t.Fatal(err)
	}
	if want := k.srv.URL + "/svc/r2-public/"; sc.Endpoint != want {
		t.Fatalf("endpoint %q, want %q", sc.Endpoint, want)
	}
	if k.discovered != 0 {
		t.Errorf("version discovery with a /v3 auth_url: %d requests", k.discovered)
	}
	b := k.authBodies[0]
	if got := dig(b, "auth", "identity", "password", "user", "id"); got != "u1" {
		t.Errorf("user id %v", got)
	}
	if got := dig(b, "auth", "scope", "project", "id"); got != "p1" {
		t.Errorf("project id %v", got)
	}
}

func TestPasswordInterfaceFallback(t *testing.T) {
	k := newKeystoneDouble(t)
	o := passwordOptions(k)
	o.ValidInterfaces = []string{"internal", "admin"}
	sc, err := NewServiceClient(context.Background(), o, "network")
	if err != nil {
		t.Fatal(err)
	}
	if want := k.srv.URL + "/svc/net-admin/"; sc.Endpoint != want {
		t.Fatalf("endpoint %q, want %q", sc.Endpoint, want)
	}
}

func TestPasswordEndpointNotFound(t *testing.T) {
	k := newKeystoneDouble(t)
	o := passwordOptions(k)
	_, err := NewServiceClient(context.Background(), o, "network") // admin only
	if !errors.Is(err, ErrEndpointNotFound) {
		t.Fatalf("network with internal/public: %v, want ErrEndpointNotFound", err)
	}
	o.RegionName = "RegionThree"
	_, err = NewServiceClient(context.Background(), o, "placement")
	if !errors.Is(err, ErrEndpointNotFound) {
		t.Fatalf("RegionThree: %v, want ErrEndpointNotFound", err)
	}
	t.Log(err)
}

func TestPasswordEndpointOverride(t *testing.T) {
	k := newKeystoneDouble(t)
	o := passwordOptions(k)
	o.EndpointOverride = k.srv.URL + "/svc/override"
	sc, err := NewServiceClient(context.Background(), o, "placement")
	if err != nil {
		t.Fatal(err)
	}
	if want := k.srv.URL + "/svc/override/"; sc.Endpoint != want {
		t.Fatalf("endpoint %q, want %q", sc.Endpoint, want)
	}
	if p := get(t, sc, "x"); p != "/svc/override/x" {
		t.Errorf("path %q", p)
	}
}

func TestPasswordWrongPassword(t *testing.T) {
	k := newKeystoneDouble(t)
	o := passwordOptions(k)
	o.Password = "wrong"
	_, err := NewServiceClient(context.Background(), o, "placement")
	if !errors.Is(err, ErrAuth) {
		t.Fatalf("err %v, want ErrAuth", err)
	}
	if !gophercloud.ResponseCodeIs(err, http.StatusUnauthorized) {
		t.Errorf("the keystone 401 is not in the chain: %v", err)
	}
}

func TestPasswordReauth(t *testing.T) {
	k := newKeystoneDouble(t)
	sc, err := NewServiceClient(context.Background(), passwordOptions(k), "placement")
	if err != nil {
		t.Fatal(err)
	}
	get(t, sc, "a")
	k.expire() // the service now answers 401 to tok-1
	get(t, sc, "b")
	get(t, sc, "c")
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.tokens != 2 {
		t.Fatalf("tokens issued: %d, want 2", k.tokens)
	}
	want := []string{"tok-1", "tok-1", "tok-2", "tok-2"}
	if fmt.Sprint(k.svcTokens) != fmt.Sprint(want) {
		t.Errorf("tokens seen by the service %v, want %v", k.svcTokens, want)
	}
}

func TestAdminToken(t *testing.T) {
	var seen []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		seen = append(seen, r.URL.Path+" "+r.Header.Get("X-Auth-Token"))
		fmt.Fprintf(w, `{"path":%q}`, r.URL.Path)
	}))
	defer srv.Close()

	o := Options{AuthType: "admin_token", Endpoint: srv.URL, Token: "admin:admin"}
	sc, err := NewServiceClient(context.Background(), o, "placement")
	if err != nil {
		t.Fatal(err)
	}
	if sc.Endpoint != srv.URL+"/" {
		t.Fatalf("endpoint %q", sc.Endpoint)
	}
	get(t, sc, "resource_providers")

	o.EndpointOverride = srv.URL + "/over///"
	sc, err = NewServiceClient(context.Background(), o, "placement")
	if err != nil {
		t.Fatal(err)
	}
	if sc.Endpoint != srv.URL+"/over/" {
		t.Fatalf("endpoint_override precedence: %q", sc.Endpoint)
	}
	get(t, sc, "traits")
	want := []string{"/resource_providers admin:admin", "/over/traits admin:admin"}
	if fmt.Sprint(seen) != fmt.Sprint(want) {
		t.Errorf("requests %q, want %q", seen, want)
	}

	_, err = NewServiceClient(context.Background(), Options{AuthType: "admin_token", Token: "x"}, "placement")
	if !errors.Is(err, ErrInvalidOptions) {
		t.Errorf("admin_token without endpoint: %v", err)
	}
}

func TestNone(t *testing.T) {
	var hdr []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hdr = append(hdr, r.Header.Values("X-Auth-Token")...)
		fmt.Fprintf(w, `{"path":%q}`, r.URL.Path)
	}))
	defer srv.Close()
	for _, at := range []string{"", "none"} {
		sc, err := NewServiceClient(context.Background(), Options{AuthType: at, EndpointOverride: srv.URL + "/v2.0"}, "network")
		if err != nil {
			t.Fatal(err)
		}
		if sc.Endpoint != srv.URL+"/v2.0/" {
			t.Fatalf("endpoint %q", sc.Endpoint)
		}
		if p := get(t, sc, "ports"); p != "/v2.0/ports" {
			t.Errorf("path %q", p)
		}
	}
	if len(hdr) != 0 {
		t.Errorf("auth_type none sent X-Auth-Token %q", hdr)
	}
	if _, err := NewServiceClient(context.Background(), Options{}, "network"); !errors.Is(err, ErrInvalidOptions) {
		t.Errorf("none without endpoint_override: %v", err)
	}
}

func TestValidate(t *testing.T) {
	good := Options{AuthType: "password", AuthURL: "http://ks:5000/v3", Username: "nova", Password: "p",
		UserDomainName: "Default", ProjectName: "service", ProjectDomainID: "default"}
	if err := good.Validate(); err != nil {
		t.Fatalf("good options: %v", err)
	}
	for name, mut := range map[string]func(*Options){
		"unknown auth type":     func(o *Options) { o.AuthType = "v3oidc" },
		"no auth_url":           func(o *Options) { o.AuthURL = "" },
		"auth_url not a URL":    func(o *Options) { o.AuthURL = "ks:5000" },
		"no user":               func(o *Options) { o.Username = "" },
		"no password":           func(o *Options) { o.Password = "" },
		"no user domain":        func(o *Options) { o.UserDomainName = "" },
		"no project domain":     func(o *Options) { o.ProjectDomainID = "" },
		"bad interface":         func(o *Options) { o.ValidInterfaces = []string{"private"} },
		"bad endpoint_override": func(o *Options) { o.EndpointOverride = "/placement" },
		"negative timeout":      func(o *Options) { o.Timeout = -time.Second },
		"admin_token no token":  func(o *Options) { *o = Options{AuthType: "admin_token", Endpoint: "http://x"} },
		"admin_token no endpoint": func(o *Options) {
			*o = Options{AuthType: "admin_token", Token: "t"}
		},
		"none no endpoint": func(o *Options) { *o = Options{AuthType: "none"} },
	} {
		o := good
		mut(&o)
		if err := o.Validate(); !errors.Is(err, ErrInvalidOptions) {
			t.Errorf("%s: Validate() = %v, want ErrInvalidOptions", name, err)
		}
	}
	for name, o := range map[string]Options{
		"user id needs no domain":    {AuthType: "v3password", AuthURL: "https://ks/v3", UserID: "u", Password: "p"},
		"project id needs no domain": {AuthType: "password", AuthURL: "https://ks/v3", UserID: "u", Password: "p", ProjectID: "x"},
		"admin_token":                {AuthType: "admin_token", Endpoint: "http://127.0.0.1:8778", Token: "admin:admin"},
		"none":                       {AuthType: "NONE", EndpointOverride: "http://127.0.0.1:9696"},
	} {
		if err := o.Validate(); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
}

func TestCAFile(t *testing.T) {
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, `{"path":"/tls"}`)
	}))
	defer srv.Close()
	ctx := context.Background()
	o := Options{AuthType: "admin_token", Endpoint: srv.URL, Token: "t"}

	// System roots: the test certificate is not trusted.
	sc, err := NewServiceClient(ctx, o, "placement")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := sc.Get(ctx, sc.ServiceURL("x"), nil, nil); err == nil {
		t.Fatal("untrusted certificate accepted")
	}

	// cafile with the test server's certificate.
	ca := t.TempDir() + "/ca.pem"
	if err := writePEM(ca, srv.Certificate().Raw); err != nil {
		t.Fatal(err)
	}
	o.CAFile = ca
	sc, err = NewServiceClient(ctx, o, "placement")
	if err != nil {
		t.Fatal(err)
	}
	if p := get(t, sc, "x"); p != "/tls" {
		t.Errorf("path %q", p)
	}

	// insecure.
	o.CAFile, o.Insecure = "", true
	sc, err = NewServiceClient(ctx, o, "placement")
	if err != nil {
		t.Fatal(err)
	}
	get(t, sc, "x")

	o.Insecure, o.CAFile = false, t.TempDir()+"/missing.pem"
	if _, err := NewServiceClient(ctx, o, "placement"); !errors.Is(err, ErrInvalidOptions) {
		t.Errorf("missing cafile: %v", err)
	}
}

func writePEM(path string, der []byte) error {
	return os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600)
}
