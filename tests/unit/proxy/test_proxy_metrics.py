"""ProxyMetrics exposes kube-proxy's names and buckets."""

from __future__ import annotations

from netplane.proxy.metrics import SYNC_BUCKETS, ProxyMetrics


def test_sync_buckets_are_kube_proxys() -> None:
    assert len(SYNC_BUCKETS) == 15
    assert SYNC_BUCKETS[0] == 0.001 and SYNC_BUCKETS[-1] == 16.384


def test_rendered_metrics() -> None:
    m = ProxyMetrics()
    m.sync_done(0.003, full=True, wall_time=1700000000.0)
    m.sync_done(0.5, full=False, wall_time=1700000001.0)
    m.sync_queued(1700000002.0)
    m.service_change(pending=3)
    m.endpoint_change(pending=1)
    m.iptables_rules("nat", total=120, written=12)
    m.restore_failed(partial=True)
    m.no_local_endpoints_count(internal=2, external=1)
    text = m.render().decode()
    lines = set(text.splitlines())
    assert 'kubeproxy_sync_proxy_rules_duration_seconds_bucket{le="0.004"} 1' in lines
    assert 'kubeproxy_sync_proxy_rules_duration_seconds_bucket{le="+Inf"} 2' in lines
    assert 'kubeproxy_sync_full_proxy_rules_duration_seconds_count 1' in lines
    assert 'kubeproxy_sync_partial_proxy_rules_duration_seconds_count 1' in lines
    assert 'kubeproxy_sync_proxy_rules_last_timestamp_seconds 1700000001' in lines
    assert 'kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds 1700000002' in lines
    assert 'kubeproxy_sync_proxy_rules_service_changes_pending 3' in lines
    assert 'kubeproxy_sync_proxy_rules_service_changes_total 1' in lines
    assert 'kubeproxy_sync_proxy_rules_endpoint_changes_pending 1' in lines
    assert 'kubeproxy_sync_proxy_rules_iptables_total{table="nat"} 120' in lines
    assert 'kubeproxy_sync_proxy_rules_iptables_last{table="nat"} 12' in lines
    assert 'kubeproxy_sync_proxy_rules_iptables_partial_restore_failures_total 1' in lines
    assert 'kubeproxy_sync_proxy_rules_no_local_endpoints_total{traffic_policy="internal"} 2' in lines
    assert 'netplane_proxy_syncs_total{kind="full"} 1' in lines
    assert 'netplane_proxy_syncs_total{kind="partial"} 1' in lines
    assert "# TYPE kubeproxy_sync_proxy_rules_iptables_restore_failures_total counter" in lines
    m.changes_applied()
    assert 'kubeproxy_sync_proxy_rules_service_changes_pending 0' in m.render().decode()
