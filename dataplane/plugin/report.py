"""The plugin's status: what `weavefast status` shows under "docker plugin".

Built from the plugin's state (networks, endpoints, pools) and from Docker's view at
the last reconciliation (network and container names: the plugin API never carries
names), so it costs no call to dockerd.
"""
from dataplane.plugin.driver import veth_names


def plugin_status(state, socket, overlay_mtu, docker_networks, reconciliation, errors):
    """A JSON-able dict; `docker_networks` is {network id: reconcile.DockerNetwork}."""
    pools = {pool["subnet"]: pool for pool in state["pools"].values()}
    networks = []
    for network_id, network in sorted(state["networks"].items()):
        in_docker = docker_networks.get(network_id)
        pool = pools.get(network.get("subnet")) or {}
        endpoints = []
        for endpoint_id, endpoint in sorted(state["endpoints"].items()):
            if endpoint["network"] != network_id:
                continue
            endpoints.append({
                "id": endpoint_id[:12],
                "container": in_docker.endpoints.get(endpoint_id, "") if in_docker else "",
                "address": endpoint.get("address"),
                "mac": endpoint["mac"],
                "interface": veth_names(endpoint_id)[0] if endpoint["joined"] else None,
            })
        networks.append({
            "id": network_id[:12],
            "name": in_docker.name if in_docker else "",
            "subnet": network.get("subnet"),
            "gateway": network.get("gateway"),
            "ip_range": pool.get("range"),
            "mtu": network["mtu"] or overlay_mtu,
            "endpoints": endpoints,
        })
    return {"socket": socket, "overlay_mtu": overlay_mtu, "networks": networks,
            "reconciliation": reconciliation, "last_errors": errors}
