package main

import (
	"sort"
	"sync"

	restful "github.com/emicklei/go-restful/v3"

	apidiscoveryv2 "k8s.io/api/apidiscovery/v2"
	"k8s.io/apiextensions-apiserver/pkg/apihelpers"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	"k8s.io/apiextensions-apiserver/pkg/apiserver"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/version"
	"k8s.io/apiserver/pkg/endpoints/discovery"
	"k8s.io/apiserver/pkg/endpoints/discovery/aggregated"
	"k8s.io/client-go/tools/cache"
	"k8s.io/klog/v2"
)

// addRootDiscovery serves the discovery documents that a full cluster gets
// from kube-apiserver's aggregator and that the stand-alone apiextensions
// server does not serve (it runs with EnableDiscovery=false):
//
//   - /apis: every API group, as a legacy APIGroupList or, on request, an
//     aggregated v2 document. The aggregated form is already kept up to date
//     per CRD by the apiextensions code; the legacy group list is kept up to
//     date here from the CRD informer.
//   - /api and /api/v1: the core group "v1" with no resources, so clients that
//     always discover the core group (kubectl, kube-rs Discovery) work.
func addRootDiscovery(s *apiserver.CustomResourceDefinitions, externalAddress string) {
	gs := s.GenericAPIServer
	container := gs.Handler.GoRestfulContainer

	apis := aggregated.WrapAggregatedDiscoveryToHandler(gs.DiscoveryGroupManager,
		gs.AggregatedDiscoveryGroupManager, gs.AggregatedDiscoveryGroupManager)
	container.Add(apis.GenerateWebService("/apis", metav1.APIGroupList{}))

	gs.AggregatedLegacyDiscoveryGroupManager.AddGroupVersion("", apidiscoveryv2.APIVersionDiscovery{
		Version:   "v1",
		Resources: []apidiscoveryv2.APIResourceDiscovery{},
		Freshness: apidiscoveryv2.DiscoveryFreshnessCurrent,
	})
	legacyRoot := discovery.NewLegacyRootAPIHandler(
		discovery.DefaultAddresses{DefaultAddress: externalAddress}, apiserver.Codecs, "/api")
	api := aggregated.WrapAggregatedDiscoveryToHandler(legacyRoot,
		gs.AggregatedLegacyDiscoveryGroupManager, gs.AggregatedLegacyDiscoveryGroupManager)
	container.Add(api.GenerateWebService("/api", metav1.APIVersions{}))

	coreV1 := new(restful.WebService)
	coreV1.Path("/api/v1")
	noResources := discovery.APIResourceListerFunc(func() []metav1.APIResource { return []metav1.APIResource{} })
	discovery.NewAPIVersionHandler(apiserver.Codecs, schema.GroupVersion{Version: "v1"}, noResources).AddToWebService(coreV1)
	container.Add(coreV1)

	groupList := &groupListSync{groups: gs.DiscoveryGroupManager, served: map[string]bool{}}
	crds := s.Informers.Apiextensions().V1().CustomResourceDefinitions()
	resync := func(interface{}) {
		list, err := crds.Lister().List(labels.Everything())
		if err != nil {
			klog.Errorf("discovery: listing CRDs: %v", err)
			return
		}
		groupList.update(list)
	}
	_, _ = crds.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    resync,
		UpdateFunc: func(_, obj interface{}) { resync(obj) },
		DeleteFunc: resync,
	})
}

// groupListSync keeps the legacy /apis group list equal to the groups of the
// established CRDs: served versions only, the highest (Kubernetes version
// order) preferred, as upstream's discovery controller does per group.
type groupListSync struct {
	mu     sync.Mutex
	groups discovery.GroupManager
	served map[string]bool
}

func (g *groupListSync) update(crds []*apiextensionsv1.CustomResourceDefinition) {
	g.mu.Lock()
	defer g.mu.Unlock()

	versions := map[string]map[string]bool{}
	for _, crd := range crds {
		if !apihelpers.IsCRDConditionTrue(crd, apiextensionsv1.Established) {
			continue
		}
		for _, v := range crd.Spec.Versions {
			if !v.Served {
				continue
			}
			if versions[crd.Spec.Group] == nil {
				versions[crd.Spec.Group] = map[string]bool{}
			}
			versions[crd.Spec.Group][v.Name] = true
		}
	}
	for group, set := range versions {
		names := make([]string, 0, len(set))
		for v := range set {
			names = append(names, v)
		}
		sort.Slice(names, func(i, j int) bool {
			return version.CompareKubeAwareVersionStrings(names[i], names[j]) > 0
		})
		apiGroup := metav1.APIGroup{Name: group}
		for _, v := range names {
			apiGroup.Versions = append(apiGroup.Versions,
				metav1.GroupVersionForDiscovery{GroupVersion: group + "/" + v, Version: v})
		}
		apiGroup.PreferredVersion = apiGroup.Versions[0]
		g.groups.AddGroup(apiGroup)
		g.served[group] = true
	}
	for group := range g.served {
		if versions[group] == nil {
			g.groups.RemoveGroup(group)
			delete(g.served, group)
		}
	}
}
