package runtime

// Paths and addresses shared by every driver, so that a sandbox looks the same
// whichever runtime runs it.
const (
	// WorkspaceDir is where a container sees its workspace's files; commands
	// start there and it is $HOME. (The process driver uses a host directory
	// instead, and sets HOME and the working directory to it.)
	WorkspaceDir = "/workspace"

	// InitPathInSandbox is where container drivers bind-mount the static
	// corral binary, read-only, to run it as PID 1 (`corral init`).
	InitPathInSandbox = "/.corral/corral"

	// ProxySocketInSandbox is where, for network mode allowlist, the
	// workspace's egress proxy socket is bind-mounted inside a container.
	ProxySocketInSandbox = "/run/corral/proxy.sock"

	// ProxyListenAddr is where the forwarder inside the sandbox (run by
	// `corral init --proxy SOCKET`) listens and relays to the proxy socket.
	ProxyListenAddr = "127.0.0.1:3128"

	// LabelWorkspace, LabelServer and LabelManaged are the labels container
	// drivers put on everything they create.
	LabelManaged   = "dev.corral.managed"
	LabelWorkspace = "dev.corral.workspace"
	LabelServer    = "dev.corral.server"
)

// ProxyEnv is the environment that points a sandbox's tools at the forwarder.
func ProxyEnv() map[string]string {
	u := "http://" + ProxyListenAddr
	return map[string]string{
		"HTTP_PROXY": u, "HTTPS_PROXY": u, "ALL_PROXY": u,
		"http_proxy": u, "https_proxy": u, "all_proxy": u,
		"NO_PROXY": "localhost,127.0.0.1,::1", "no_proxy": "localhost,127.0.0.1,::1",
	}
}
