// Only here so that a GOPATH-mode build (GO111MODULE=off, Debian's Go source
// packages under /usr/share/gocode) uses minimal module compatibility and
// resolves import paths with a major-version suffix such as .../v3.
module cloudpods-kube-apiserver

go 1.24
