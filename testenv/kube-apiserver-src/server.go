package main

import (
	"flag"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"

	"github.com/spf13/pflag"
	noopoteltrace "go.opentelemetry.io/otel/trace/noop"

	"k8s.io/apiextensions-apiserver/pkg/apiserver"
	"k8s.io/apiextensions-apiserver/pkg/cmd/server/options"
	generatedopenapi "k8s.io/apiextensions-apiserver/pkg/generated/openapi"
	"k8s.io/apiserver/pkg/authentication/authenticator"
	"k8s.io/apiserver/pkg/authentication/authenticatorfactory"
	"k8s.io/apiserver/pkg/authentication/request/union"
	x509request "k8s.io/apiserver/pkg/authentication/request/x509"
	"k8s.io/apiserver/pkg/authentication/user"
	"k8s.io/apiserver/pkg/authorization/authorizerfactory"
	openapinamer "k8s.io/apiserver/pkg/endpoints/openapi"
	genericapiserver "k8s.io/apiserver/pkg/server"
	"k8s.io/apiserver/pkg/server/dynamiccertificates"
	"k8s.io/apiserver/pkg/util/openapi"
	"k8s.io/apiserver/pkg/util/webhook"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/klog/v2"
)

// urlOnlyResolver answers every Service lookup with an error: without a core
// API there are no Services, so a conversion webhook must be given by URL.
type urlOnlyResolver struct{}

func (urlOnlyResolver) ResolveEndpoint(namespace, name string, port int32) (*url.URL, error) {
	return nil, fmt.Errorf("cannot resolve service %s/%s: this test server has no core API, give the webhook a url", namespace, name)
}

// runServer builds the server the way upstream options.Config() does, with
// these differences, all because there is no kube-apiserver behind it:
//   - no CoreAPI kubeconfig and no admission plugins (both need core informers);
//   - API priority and fairness off (it needs flowcontrol objects);
//   - authentication: a client certificate signed by DIR's CA, or DIR's static
//     bearer token (user "admin", group system:masters); anonymous gets 401;
//   - authorization: always allow;
//   - root discovery (/apis, /api, /api/v1) added, see discovery.go.
func runServer(args []string) error {
	opts := options.NewCustomResourceDefinitionsServerOptions(os.Stdout, os.Stderr)
	flags := pflag.NewFlagSet("serve", pflag.ContinueOnError)
	opts.AddFlags(flags)
	klog.InitFlags(nil)
	flags.AddGoFlagSet(flag.CommandLine)
	stateDir := flags.String("state-dir", "", "directory for certificates, token, kubeconfig and server-url")
	listen := flags.String("listen", "127.0.0.1:0", "loopback host:port for HTTPS (port 0: any free port)")
	if err := flags.Parse(args); err != nil {
		return err
	}
	if *stateDir == "" {
		return fmt.Errorf("--state-dir is required")
	}
	if err := opts.ServerRunOptions.ComponentGlobalsRegistry.Set(); err != nil {
		return err
	}
	creds, err := loadOrCreateCredentials(*stateDir)
	if err != nil {
		return fmt.Errorf("credentials: %w", err)
	}

	// Bind first: the port is known before anything else, and a free one is
	// picked by the kernel, with no race.
	listener, err := net.Listen("tcp", *listen)
	if err != nil {
		return err
	}
	addr := listener.Addr().(*net.TCPAddr)
	if !addr.IP.IsLoopback() {
		return fmt.Errorf("will only serve on a loopback address, not %s", addr)
	}

	rec := opts.RecommendedOptions
	rec.CoreAPI = nil
	rec.Admission = nil
	rec.Authentication = nil
	rec.Authorization = nil
	rec.Features.EnablePriorityAndFairness = false
	rec.SecureServing.Listener = listener
	rec.SecureServing.BindAddress = addr.IP
	rec.SecureServing.BindPort = addr.Port
	rec.SecureServing.ExternalAddress = addr.IP
	rec.SecureServing.ServerCert.CertKey.CertFile = filepath.Join(*stateDir, "server.crt")
	rec.SecureServing.ServerCert.CertKey.KeyFile = filepath.Join(*stateDir, "server.key")
	opts.ServerRunOptions.AdvertiseAddress = addr.IP
	if len(rec.Etcd.StorageConfig.Transport.ServerList) == 0 {
		return fmt.Errorf("--etcd-servers is required")
	}
	if err := opts.Complete(); err != nil {
		return err
	}
	if err := opts.Validate(); err != nil {
		return err
	}

	generic := genericapiserver.NewRecommendedConfig(apiserver.Codecs)
	if err := opts.ServerRunOptions.ApplyTo(&generic.Config); err != nil {
		return err
	}
	if err := rec.ApplyTo(generic); err != nil {
		return err
	}
	if err := opts.APIEnablement.ApplyTo(&generic.Config, apiserver.DefaultAPIResourceConfigSource(), apiserver.Scheme); err != nil {
		return err
	}
	if err := configureAuth(generic, creds); err != nil {
		return err
	}

	definitions := openapi.GetOpenAPIDefinitionsWithoutDisabledFeatures(generatedopenapi.GetOpenAPIDefinitions)
	namer := openapinamer.NewDefinitionNamer(apiserver.Scheme, scheme.Scheme)
	generic.OpenAPIConfig = genericapiserver.DefaultOpenAPIConfig(definitions, namer)
	generic.OpenAPIV3Config = genericapiserver.DefaultOpenAPIV3Config(definitions, namer)

	config := &apiserver.Config{
		GenericConfig: generic,
		ExtraConfig: apiserver.ExtraConfig{
			CRDRESTOptionsGetter: options.NewCRDRESTOptionsGetter(*rec.Etcd, generic.ResourceTransformers, generic.StorageObjectCountTracker),
			ServiceResolver:      urlOnlyResolver{},
			AuthResolverWrapper: webhook.NewDefaultAuthenticationInfoResolverWrapper(nil, nil,
				generic.LoopbackClientConfig, noopoteltrace.NewTracerProvider()),
		},
	}
	crdServer, err := config.Complete().New(genericapiserver.NewEmptyDelegate())
	if err != nil {
		return err
	}
	addRootDiscovery(crdServer, addr.String())

	serverURL := "https://" + addr.String()
	if err := writeKubeconfig(*stateDir, serverURL, creds); err != nil {
		return err
	}
	klog.Infof("serving CRDs on %s; kubeconfig %s", serverURL, filepath.Join(*stateDir, "kubeconfig"))
	ctx := genericapiserver.SetupSignalContext()
	return crdServer.GenericAPIServer.PrepareRun().RunWithContext(ctx)
}

// configureAuth sets authentication (client certificate or bearer token)
// and an always-allow authorizer on the generic config.
func configureAuth(generic *genericapiserver.RecommendedConfig, creds *credentials) error {
	clientCA, err := dynamiccertificates.NewStaticCAContent("cloudpods-testenv-client-ca", creds.caPEM)
	if err != nil {
		return err
	}
	// Lets the TLS layer ask for and verify client certificates.
	if err := generic.Authentication.ApplyClientCert(clientCA, generic.SecureServing); err != nil {
		return err
	}
	admin := &user.DefaultInfo{
		Name:   "admin",
		UID:    "cloudpods-testenv-admin",
		Groups: []string{user.SystemPrivilegedGroup, user.AllAuthenticated},
	}
	authenticators := []authenticator.Request{
		// CN is the user, O the groups.
		x509request.NewDynamic(clientCA.VerifyOptions, x509request.CommonNameUserConversion),
		authenticatorfactory.NewFromTokens(map[string]*user.DefaultInfo{creds.token: admin}, nil),
	}
	generic.Authentication.Authenticator = union.New(authenticators...)
	generic.Authorization.Authorizer = authorizerfactory.NewAlwaysAllowAuthorizer()
	return nil
}
