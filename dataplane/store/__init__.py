"""The cluster store: etcd, reached through its v3 JSON gateway (`--store etcd://HOST:2379`)."""
from dataplane.store.etcd import EtcdStore, StoreError, StoreUnavailable, parse_store_url

__all__ = ["EtcdStore", "StoreError", "StoreUnavailable", "parse_store_url"]
