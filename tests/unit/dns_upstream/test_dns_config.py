"""The Corefile subset: parsing, validation with file:line errors, the built chain, reload."""

from __future__ import annotations

import random
import time
from pathlib import Path

import dnslib
import pytest

from netplane.dns.chain import Response, make_reply
from netplane.dns.config import ConfigWatcher, default_config, load_config, parse_config
from netplane.dns.forward import Upstream
from netplane.dns.metrics import DnsMetrics
from netplane.errors import ConfigError

KUBEADM = """\
.:53 {
    errors
    health {
       lameduck 5s
    }
    ready
    kubernetes cluster.local in-addr.arpa ip6.arpa {
       pods insecure
       fallthrough in-addr.arpa ip6.arpa
       ttl 30
    }
    prometheus :9153
    forward . 10.0.0.2 10.0.0.3:5353 {
       max_concurrent 1000
    }
    cache 30 {
       disable success cluster.local
       disable denial cluster.local
    }
    loop
    reload
    loadbalance
}
"""


def test_kubeadm_corefile_without_loadbalance():
    cfg = parse_config(KUBEADM.replace("    loadbalance\n", ""), "Corefile")
    assert cfg.zones == (".",) and cfg.port == 53 and cfg.errors and cfg.loop
    assert str(cfg.health) == ":8080" and cfg.lameduck == 5.0
    assert str(cfg.ready) == ":8181" and str(cfg.prometheus) == ":9153"
    k = cfg.kubernetes
    assert (k.zone, k.ttl, k.pods, k.fallthrough) == ("cluster.local", 30, "insecure", ("in-addr.arpa", "ip6.arpa"))
    assert cfg.forward.upstreams == (Upstream("10.0.0.2"), Upstream("10.0.0.3", 5353))
    assert cfg.forward.max_concurrent == 1000 and cfg.forward.policy == "random"
    c = cfg.cache
    assert (c.success_max_ttl, c.denial_max_ttl, c.success_min_ttl) == (30, 30, 5)
    assert c.disable_success == ("cluster.local.",) and c.disable_denial == ("cluster.local.",)
    assert (cfg.reload.interval, cfg.reload.jitter) == (30.0, 15.0)
    assert len(cfg.digest) == 128


def test_unsupported_directive_names_file_line_and_directive():
    with pytest.raises(ConfigError, match=r"^Corefile:22: loadbalance: unknown or unsupported directive"):
        parse_config(KUBEADM, "Corefile")


def test_default_config_forwards_to_the_given_resolv_conf(tmp_path: Path):
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("nameserver 10.7.7.7\n")
    cfg = default_config(str(resolv), zone="example.local", port=1053)
    assert cfg.port == 1053 and cfg.kubernetes.zone == "example.local"
    assert cfg.forward.upstreams == (Upstream("10.7.7.7"),)
    assert cfg.cache.disable_success == ("example.local.",)


def test_every_option_parses(tmp_path: Path):
    (tmp_path / "upstreams.conf").write_text("nameserver 10.1.1.1\n")
    (tmp_path / "Corefile").write_text("""\
dns://cluster.local:1053 example.org:1053 {   # two zones, one port
    kubernetes cluster.local 10.96.0.0/12 {
        pods disabled
        endpoint_pod_names
        ttl 0
        fallthrough
    }
    forward . upstreams.conf "127.0.0.1:5300" {
        policy round_robin
        max_fails 0
        health_check 250ms
        expire 1m30s
        timeout 1.5s
        deadline 3s
        force_tcp
        except internal.example.org
    }
    cache 600 example.org {
        success 100 300 1
        denial 50
        prefetch 5 2m 20%
        serve_stale 10m verify
        stale_ttl 30
        servfail 1s
        disable denial
    }
    health 127.0.0.1:18080
    ready [::1]:18181
    prometheus
    reload 10s 8s
}
""")
    cfg = load_config(tmp_path / "Corefile")
    assert cfg.zones == ("cluster.local.", "example.org.") and cfg.port == 1053
    k = cfg.kubernetes
    assert (k.reverse_cidrs, k.endpoint_pod_names, k.ttl, k.fallthrough) == (("10.96.0.0/12",), True, 0, (".",))
    f = cfg.forward
    assert f.upstreams == (Upstream("10.1.1.1"), Upstream("127.0.0.1", 5300))
    assert (f.policy, f.max_fails, f.health_check, f.expire, f.timeout, f.deadline, f.force_tcp) == (
        "round_robin", 0, 0.25, 90.0, 1.5, 3.0, True)
    assert f.except_zones == ("internal.example.org.",)
    c = cfg.cache
    assert c.zones == ("example.org.",)
    assert (c.success_capacity, c.success_max_ttl, c.success_min_ttl) == (100, 300, 1)
    assert (c.denial_capacity, c.denial_max_ttl) == (50, 600)
    assert (c.prefetch_amount, c.prefetch_duration, c.prefetch_percentage) == (5, 120.0, 20)
    assert (c.serve_stale, c.serve_stale_mode, c.stale_ttl, c.servfail_ttl) == (600.0, "verify", 30, 1)
    assert c.disable_denial == ("example.org.",)
    assert str(cfg.health) == "127.0.0.1:18080" and str(cfg.ready) == "[::1]:18181"
    assert str(cfg.prometheus) == "127.0.0.1:9153"
    assert (cfg.reload.interval, cfg.reload.jitter) == (10.0, 5.0)          # jitter <= interval / 2


@pytest.mark.parametrize("text, error", [
    ("", r"no server block"),
    (".:53 {\n  errors\n", r"C:1: '\{' is never closed"),
    (".:53 {\n}\n}\n", r"C:3: unexpected '\}'"),
    (".:53 {\n}\nexample.org {\n}\n", r"C:3: only one server block"),
    (".:53 {\n errors\n errors\n}\n", r"C:3: errors: given twice \(first on line 2\)"),
    (".:53 {\n errors now\n}\n", r"C:2: errors: takes 0 argument"),
    (".:99999 {\n}\n", r"C:1: .*port must be an integer 0..65535"),
    (".:53 example.org:54 {\n}\n", r"C:1: server block: every zone must use the same port"),
    ("tls://.:853 {\n}\n", r"C:1: server block 'tls://.:853': only dns://"),
    (".:53 {\n\n forward . 10.0.0.1 {\n   policy fastest\n }\n}\n", r"C:4: forward policy: must be one of random"),
    (".:53 {\n forward . 10.0.0.1 {\n   timeout soon\n }\n}\n", r"C:3: forward timeout: timeout: bad duration 'soon'"),
    (".:53 {\n forward . 10.0.0.1 {\n   timeout 6s\n }\n}\n", r"C:2: forward: deadline \(5s\) is shorter than timeout"),
    (".:53 {\n forward . {\n }\n}\n", r"C:2: forward: needs FROM and at least one upstream"),
    (".:53 {\n forward . dns.google\n}\n", r"C:2: forward: upstream 'dns.google' is not an IP address"),
    (".:53 {\n forward . /nonexistent/resolv.conf\n}\n", r"C:2: forward: cannot read upstream file"),
    (".:53 {\n forward . 10.0.0.1 {\n   retries 3\n }\n}\n", r"C:3: forward retries: unsupported option"),
    (".:53 {\n cache {\n   success 0\n }\n}\n", r"C:3: cache success: capacity must be an integer >= 1"),
    (".:53 {\n cache {\n   prefetch 1 1m 5%\n }\n}\n", r"C:3: cache prefetch: percentage must be an integer 10..90"),
    (".:53 {\n cache {\n   disable everything\n }\n}\n", r"C:3: cache disable: first argument must be success or denial"),
    (".:53 {\n cache {\n   serve_stale 1h later\n }\n}\n", r"C:3: cache serve_stale: mode must be immediate or verify"),
    (".:53 {\n cache {\n   success 10 3 4\n }\n}\n", r"C:2: cache: cache: success TTLs must satisfy"),
    (".:53 {\n kubernetes\n}\n", r"C:2: kubernetes: needs exactly one cluster zone"),
    (".:53 {\n kubernetes cluster.local {\n   pods verified\n }\n}\n", r"C:3: kubernetes pods: .*verified is not supported"),
    (".:53 {\n kubernetes cluster.local {\n   ttl 3601\n }\n}\n", r"C:3: kubernetes ttl: ttl must be an integer 0..3600"),
    (".:53 {\n kubernetes cluster.local {\n   noendpoints\n }\n}\n", r"C:3: kubernetes noendpoints: unsupported"),
    (".:53 {\n kubernetes cluster.local 10.0.0.0/33\n}\n", r"C:2: kubernetes: bad network"),
    (".:53 {\n health bogus:80\n}\n", r"C:2: health: bad address 'bogus:80'"),
    (".:53 {\n health {\n  lameduck\n }\n}\n", r"C:3: lameduck: takes 1 argument"),
    (".:53 {\n reload 1s\n}\n", r"C:2: reload: interval must be at least 2s"),
    (".:53 {\n loop {\n }\n}\n", r"C:2: loop: takes no block"),
    (".:53 {\n errors \"open\n}\n", r"C:2: a quoted string is never closed"),
])
def test_errors_name_file_line_and_directive(text, error):
    with pytest.raises(ConfigError, match=error):
        parse_config(text, "C")


def test_load_config_names_a_missing_file(tmp_path: Path):
    with pytest.raises(ConfigError, match="missing.conf: cannot read"):
        load_config(tmp_path / "missing.conf")


# -- the built chain -------------------------------------------------------------------------------


class StubKubernetes:
    """Stands in for netplane.dns.kubernetes: answers svc.cluster.local names, falls through
    (None) for the rest; for `stale.svc.cluster.local` it falls through too."""

    name = "kubernetes"

    def __init__(self, zone, options, upstream):
        self.options, self.upstream, self.ip = options, upstream, "10.96.0.1"

    def __call__(self, next_handler):
        return self

    def serve(self, req):
        name = str(req.record.q.qname).lower()
        if name.endswith(".svc.cluster.local.") and not name.startswith("stale."):
            reply = make_reply(req, dnslib.RCODE.NOERROR, aa=True)
            reply.add_answer(dnslib.RR(req.record.q.qname, dnslib.QTYPE.A, ttl=30, rdata=dnslib.A(self.ip)))
            return Response(record=reply, cacheable=True, plugin=self.name)
        return None


def built(fakes, clock, text, **kw):
    cfg = parse_config(text, "C")
    fake = fakes.FakeUpstreams(clock, list(cfg.forward.upstreams))
    stubs = []

    def kubernetes_plugin(zone, options, upstream):
        stubs.append(StubKubernetes(zone, options, upstream))
        return stubs[-1]

    pipeline = cfg.build(object(), DnsMetrics(), exchanger=fake, kubernetes_plugin=kubernetes_plugin, **kw)
    return pipeline, fake, stubs[0] if stubs else None


def test_chain_order_kubernetes_then_cache_then_forward(fakes, clock):
    text = ".:53 {\n kubernetes cluster.local\n forward . 127.0.0.1:5301\n cache\n loop\n}\n"
    pipeline, fake, stub = built(fakes, clock, text)
    up = Upstream("127.0.0.1", 5301)
    serve = pipeline.handler.serve
    assert serve(fakes.make_request("web.default.svc.cluster.local")).record.rr[0].rdata == dnslib.A("10.96.0.1")
    assert fake.count(up) == 0
    r1, r2 = serve(fakes.make_request("example.com")), serve(fakes.make_request("example.com"))
    assert (r1.plugin, r2.plugin) == ("forward", "cache") and fake.count(up) == 1
    # a cluster-zone name that kubernetes passed on is never cached, though the file did not say so
    serve(fakes.make_request("stale.svc.cluster.local")), serve(fakes.make_request("stale.svc.cluster.local"))
    assert fake.count(up) == 3
    assert pipeline.loop is not None and pipeline.probe_loop(tries=1) is False
    # ExternalName targets resolve through the handlers after kubernetes
    assert [str(rr.rdata) for rr in stub.upstream("ext.example.net.", dnslib.QTYPE.A)] == ["192.0.2.1"]
    pipeline.close()


def test_server_block_zones_refuse_other_names(fakes, clock):
    pipeline, fake, _ = built(fakes, clock, "example.org:53 {\n forward . 127.0.0.1:5301\n}\n")
    refused = pipeline.handler.serve(fakes.make_request("example.com"))
    assert refused.record.header.rcode == dnslib.RCODE.REFUSED
    assert pipeline.handler.serve(fakes.make_request("www.example.org")).plugin == "forward"


def test_loop_callback_reaches_main(fakes, clock):
    messages = []
    pipeline, fake, _ = built(fakes, clock, ".:53 {\n forward . 127.0.0.1:5301\n loop\n}\n", on_loop=messages.append)
    up = Upstream("127.0.0.1", 5301)
    fake.mode[up] = lambda q, proto: pipeline.handler.serve(fakes.make_request(
        str(dnslib.DNSRecord.parse(q).q.qname), "HINFO")).record.pack()
    assert pipeline.probe_loop(tries=1) is True
    assert len(messages) == 1 and "127.0.0.1:5301" in messages[0]


# -- reload --------------------------------------------------------------------------------------------

GOOD = ".:53 {\n forward . 10.0.0.1\n reload 10s 2s\n}\n"


def test_watcher_applies_changes_and_keeps_the_old_config_on_errors(tmp_path: Path, clock):
    path = tmp_path / "Corefile"
    path.write_text(GOOD)
    current = load_config(path)
    applied = []
    metrics = DnsMetrics()
    watcher = ConfigWatcher(path, applied.append, current=current, clock=clock, rng=random.Random(3), metrics=metrics)
    assert (watcher.interval, watcher.jitter) == (10.0, 2.0)       # from the running config
    path.write_text(GOOD.replace("10.0.0.1", "10.0.0.2"))
    clock.advance(7.9)
    assert watcher.poll() is None and applied == []                # not due yet (interval - jitter)
    clock.advance(4.2)
    new = watcher.poll()
    assert new is not None and applied == [new] and new.forward.upstreams == (Upstream("10.0.0.2"),)
    assert watcher.check() is None                                  # same checksum: nothing to do
    path.write_text(".:53 {\n forward . 10.0.0.3 {\n  policy fastest\n }\n}\n")
    assert watcher.check() is None and applied == [new]
    assert metrics.reload_failed.value() == 1
    assert watcher.check() is None and metrics.reload_failed.value() == 1   # the same bad file, once
    path.write_text(GOOD.replace("10.0.0.1", "10.0.0.4"))
    assert watcher.check().forward.upstreams == (Upstream("10.0.0.4"),) and len(applied) == 2


def test_watcher_keeps_the_old_config_when_applying_fails(tmp_path: Path, clock, caplog):
    path = tmp_path / "Corefile"
    path.write_text(GOOD)

    def refuse(config):
        raise ConfigError("port 53 is busy")

    watcher = ConfigWatcher(path, refuse, current=load_config(path), clock=clock)
    path.write_text(GOOD.replace("10.0.0.1", "10.0.0.9"))
    assert watcher.check() is None
    assert "port 53 is busy" in caplog.text and "keeping the running configuration" in caplog.text


def test_watcher_thread_notices_a_change(tmp_path: Path, wait):
    path = tmp_path / "Corefile"
    path.write_text(GOOD)
    applied = []
    watcher = ConfigWatcher(path, applied.append, interval=0.05, jitter=0.0)
    watcher.start()
    try:
        time.sleep(0.1)
        path.write_text(GOOD.replace("10.0.0.1", "10.0.0.5"))
        assert wait(lambda: applied, timeout=3.0)
        assert applied[0].forward.upstreams == (Upstream("10.0.0.5"),)
    finally:
        watcher.stop()
