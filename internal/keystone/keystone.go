// Package keystone builds gophercloud service clients from the keystoneauth
// options nova reads from its [placement], [neutron] and [glance] sections.
//
// Three kinds of auth_type are understood, as keystoneauth loads them:
//
//   - "password" / "v3password": a Keystone v3 token (gophercloud
//     AuthenticatedClient with AllowReauth, so the token is reused for every
//     request and fetched again when a service answers 401). The endpoint is
//     taken from the token's catalog (service type, region_name, the first of
//     valid_interfaces that has one) unless endpoint_override is set.
//   - "admin_token": a static token (the plugin's token option) sent as
//     X-Auth-Token to endpoint_override, or else to the plugin's endpoint.
//   - "none" (or empty): no token at all; endpoint_override (or endpoint) is
//     required.
//
// The service client's Endpoint always ends with "/".
package keystone

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/gophercloud/gophercloud/v2"
	"github.com/gophercloud/gophercloud/v2/openstack"
)

// Auth types (nova.conf auth_type values).
const (
	AuthPassword   = "password"
	AuthV3Password = "v3password"
	AuthAdminToken = "admin_token"
	AuthNone       = "none"
)

// DefaultValidInterfaces is nova's default valid_interfaces for its
// keystoneauth adapters: the internal endpoint first, then the public one.
var DefaultValidInterfaces = []string{"internal", "public"}

// Errors callers can test with errors.Is.
var (
	// ErrInvalidOptions: Options.Validate failed.
	ErrInvalidOptions = errors.New("keystone: invalid options")
	// ErrAuth: Keystone refused the credentials or could not be reached.
	ErrAuth = errors.New("keystone: authentication failed")
	// ErrEndpointNotFound: the catalog has no endpoint for the service type,
	// region and interfaces asked for.
	ErrEndpointNotFound = errors.New("keystone: endpoint not found in the service catalog")
)

// Options are the keystoneauth options of one nova.conf section
// ([placement], [neutron], [glance]); field names follow the option names
// (auth_url → AuthURL, user_domain_name → UserDomainName, …).
type Options struct {
	AuthType string // "password", "v3password", "admin_token", "none", "" (= none)

	AuthURL           string
	Username          string
	UserID            string
	Password          string
	ProjectName       string
	ProjectID         string
	UserDomainName    string
	UserDomainID      string
	ProjectDomainName string
	ProjectDomainID   string
	RegionName        string

	// ValidInterfaces are tried in order against the catalog; empty means
	// DefaultValidInterfaces. "internalURL"-style names are accepted.
	ValidInterfaces []string
	// EndpointOverride, when set, is used instead of a catalog lookup.
	EndpointOverride string

	Endpoint string // admin_token (and none) plugin's endpoint option
	Token    string // admin_token plugin's token option

	Insecure bool          // skip TLS verification
	CAFile   string        // PEM bundle to verify TLS servers with (instead of the system pool)
	Timeout  time.Duration // per HTTP request; 0 means none (the request context still applies)
}

func (o Options) authType() string {
	t := strings.ToLower(strings.TrimSpace(o.AuthType))
	if t == "" {
		return AuthNone
	}
	return t
}

// interfaces returns the valid interfaces normalised to "public",
// "internal", "admin".
func (o Options) interfaces() ([]gophercloud.Availability, error) {
	in := o.ValidInterfaces
	if len(in) == 0 {
		in = DefaultValidInterfaces
	}
	out := make([]gophercloud.Availability, 0, len(in))
	for _, s := range in {
		n := strings.TrimSuffix(strings.ToLower(strings.TrimSpace(s)), "url")
		switch a := gophercloud.Availability(n); a {
		case gophercloud.AvailabilityPublic, gophercloud.AvailabilityInternal, gophercloud.AvailabilityAdmin:
			if !slices.Contains(out, a) {
				out = append(out, a)
			}
		default:
			return nil, fmt.Errorf("%w: valid_interfaces: unknown interface %q", ErrInvalidOptions, s)
		}
	}
	return out, nil
}

// Validate checks that the options are complete for their auth type. Every
// error wraps ErrInvalidOptions.
func (o Options) Validate() error {
	bad := func(format string, a ...any) error {
		return fmt.Errorf("%w: auth_type %s: %s", ErrInvalidOptions, o.authType(), fmt.Sprintf(format, a...))
	}
	if _, err := o.interfaces(); err != nil {
		return err
	}
	if o.Timeout < 0 {
		return bad("timeout must not be negative")
	}
	for _, opt := range [][2]string{{"auth_url", o.AuthURL}, {"endpoint_override", o.EndpointOverride}, {"endpoint", o.Endpoint}} {
		name, u := opt[0], opt[1]
		if u == "" {
			continue
		}
		if p, err := url.Parse(u); err != nil || (p.Scheme != "http" && p.Scheme != "https") || p.Host == "" {
			return bad("%s %q is not an http(s) URL", name, u)
		}
	}
	switch o.authType() {
	case AuthPassword, AuthV3Password:
		if o.AuthURL == "" {
			return bad("auth_url is required")
		}
		if o.Username == "" && o.UserID == "" {
			return bad("username or user_id is required")
		}
		if o.Password == "" {
			return bad("password is required")
		}
		if o.UserID == "" && o.UserDomainName == "" && o.UserDomainID == "" {
			return bad("username %q needs user_domain_name or user_domain_id", o.Username)
		}
		if o.ProjectID == "" && o.ProjectName != "" && o.ProjectDomainName == "" && o.ProjectDomainID == "" {
			return bad("project_name %q needs project_domain_name or project_domain_id", o.ProjectName)
		}
	case AuthAdminToken:
		if o.Token == "" {
			return bad("token is required")
		}
		if o.EndpointOverride == "" && o.Endpoint == "" {
			return bad("endpoint or endpoint_override is required")
		}
	case AuthNone:
		if o.EndpointOverride == "" && o.Endpoint == "" {
			return bad("endpoint_override is required")
		}
	default:
		return fmt.Errorf("%w: unsupported auth_type %q (want password, v3password, admin_token or none)", ErrInvalidOptions, o.AuthType)
	}
	return nil
}

// httpClient builds the HTTP client for the TLS and timeout options.
func (o Options) httpClient() (http.Client, error) {
	hc := http.Client{Timeout: o.Timeout}
	if !o.Insecure && o.CAFile == "" {
		return hc, nil
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	cfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if o.Insecure {
		cfg.InsecureSkipVerify = true //nolint:gosec // the operator asked for insecure = true
	} else {
		pem, err := os.ReadFile(o.CAFile)
		if err != nil {
			return hc, fmt.Errorf("%w: cafile: %w", ErrInvalidOptions, err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return hc, fmt.Errorf("%w: cafile %s: no PEM certificates", ErrInvalidOptions, o.CAFile)
		}
		cfg.RootCAs = pool
	}
	tr.TLSClientConfig = cfg
	hc.Transport = tr
	return hc, nil
}

// withSlash returns u with exactly one trailing "/".
func withSlash(u string) string {
	return strings.TrimRight(u, "/") + "/"
}

// NewServiceClient authenticates as o says (for password auth types this
// talks to Keystone) and returns a client for serviceType ("placement",
// "network", "image", …). The returned client is safe for concurrent use.
func NewServiceClient(ctx context.Context, o Options, serviceType string) (*gophercloud.ServiceClient, error) {
	if serviceType == "" {
		return nil, fmt.Errorf("%w: empty service type", ErrInvalidOptions)
	}
	if err := o.Validate(); err != nil {
		return nil, err
	}
	hc, err := o.httpClient()
	if err != nil {
		return nil, err
	}
	var (
		pc       *gophercloud.ProviderClient
		endpoint string
	)
	switch o.authType() {
	case AuthPassword, AuthV3Password:
		pc, err = o.authenticate(ctx, hc)
		if err != nil {
			return nil, err
		}
		endpoint = o.EndpointOverride
		if endpoint == "" {
			endpoint, err = o.catalogEndpoint(pc, serviceType)
			if err != nil {
				return nil, err
			}
		}
	case AuthAdminToken:
		pc = &gophercloud.ProviderClient{HTTPClient: hc}
		pc.UseTokenLock()
		pc.SetToken(o.Token)
		endpoint = cmpOr(o.EndpointOverride, o.Endpoint)
	default: // none
		pc = &gophercloud.ProviderClient{HTTPClient: hc}
		endpoint = cmpOr(o.EndpointOverride, o.Endpoint)
	}
	pc.UserAgent.Prepend("lxc-agent")
	return &gophercloud.ServiceClient{
		ProviderClient: pc,
		Endpoint:       withSlash(endpoint),
		Type:           serviceType,
	}, nil
}

func cmpOr(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

// authenticate gets a v3 token. It is openstack.AuthenticatedClient with
// our HTTP client (TLS options, timeout) set before the first request.
func (o Options) authenticate(ctx context.Context, hc http.Client) (*gophercloud.ProviderClient, error) {
	ao := gophercloud.AuthOptions{
		IdentityEndpoint: o.AuthURL,
		Username:         o.Username,
		UserID:           o.UserID,
		Password:         o.Password,
		AllowReauth:      true,
	}
	if o.UserID == "" {
		if o.UserDomainID != "" {
			ao.DomainID = o.UserDomainID
		} else {
			ao.DomainName = o.UserDomainName
		}
	}
	switch {
	case o.ProjectID != "":
		ao.Scope = &gophercloud.AuthScope{ProjectID: o.ProjectID}
	case o.ProjectName != "":
		ao.Scope = &gophercloud.AuthScope{ProjectName: o.ProjectName}
		if o.ProjectDomainID != "" {
			ao.Scope.DomainID = o.ProjectDomainID
		} else {
			ao.Scope.DomainName = o.ProjectDomainName
		}
	}
	pc, err := openstack.NewClient(o.AuthURL)
	if err != nil {
		return nil, fmt.Errorf("%w: auth_url %q: %w", ErrInvalidOptions, o.AuthURL, err)
	}
	pc.HTTPClient = hc
	if o.authType() == AuthV3Password {
		// v3password names the API version: no version discovery.
		if err := openstack.AuthenticateV3(ctx, pc, &ao, gophercloud.EndpointOpts{}); err != nil {
			return nil, fmt.Errorf("%w: %s as %s: %w", ErrAuth, o.AuthURL, o.user(), err)
		}
		return pc, nil
	}
	if err := openstack.Authenticate(ctx, pc, ao); err != nil {
		return nil, fmt.Errorf("%w: %s as %s: %w", ErrAuth, o.AuthURL, o.user(), err)
	}
	return pc, nil
}

func (o Options) user() string {
	if o.UserID != "" {
		return o.UserID
	}
	return o.Username
}

// catalogEndpoint picks serviceType's URL from the token's catalog: the
// first valid interface that has an endpoint in RegionName (any region when
// empty) wins.
func (o Options) catalogEndpoint(pc *gophercloud.ProviderClient, serviceType string) (string, error) {
	ifaces, err := o.interfaces()
	if err != nil {
		return "", err
	}
	if pc.EndpointLocator == nil {
		return "", fmt.Errorf("%w: %s: no catalog (unscoped token?)", ErrEndpointNotFound, serviceType)
	}
	for _, iface := range ifaces {
		eo := gophercloud.EndpointOpts{Type: serviceType, Region: o.RegionName, Availability: iface}
		// Version stays 0: no version discovery request, like nova's
		// adapters that take the catalog URL as it is.
		eo.ApplyDefaults(serviceType)
		u, err := pc.EndpointLocator(eo)
		if err == nil && u != "" {
			return u, nil
		}
		var nf *gophercloud.ErrEndpointNotFound
		if err != nil && !errors.As(err, &nf) {
			return "", fmt.Errorf("%w: %s (%s): %w", ErrEndpointNotFound, serviceType, iface, err)
		}
	}
	region := o.RegionName
	if region == "" {
		region = "any region"
	}
	return "", fmt.Errorf("%w: service type %q, %s, interfaces %v", ErrEndpointNotFound, serviceType, region, ifaces)
}
