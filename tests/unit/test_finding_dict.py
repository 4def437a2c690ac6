"""``Finding.to_dict``: the fast path for scalar findings gives what ``asdict`` did."""

from dataclasses import asdict

from coexistence.reconcile.findings import Finding, Kind


def _as_before(f: Finding) -> dict:
    data = asdict(f)
    data["kind"] = str(f.kind)
    data["keys"] = list(f.keys)
    return {k: v for k, v in data.items() if v not in (None, [])}


def test_each_shape_of_finding_gives_the_same_dict_in_the_same_order():
    findings = [
        Finding(Kind.MISSING_IN_CLOUD, "customer", "10042"),
        Finding(Kind.MISMATCH, "customer", "10042", "name", "Acme", "ACME", "legacy"),
        Finding(Kind.MISMATCH, "customer", "10042", "credit_limit", 1.5, 2, "cloud"),
        Finding(Kind.DUPLICATE, "customer", "10042", side="legacy", keys=("10042", "10043")),
        Finding(Kind.KEY_MISMATCH, "customer", "10042", cloud_key="C-1", detail="same nk"),
        Finding(Kind.MISMATCH, "customer", "10042", "sites", [{"city": "Oslo"}], []),
    ]
    for f in findings:
        assert list(f.to_dict().items()) == list(_as_before(f).items())


def test_a_container_value_is_copied_not_shared():
    sites = [{"city": "Oslo"}]
    data = Finding(Kind.MISMATCH, "customer", "10042", "sites", sites, None).to_dict()
    data["legacy"][0]["city"] = "Bergen"
    assert sites == [{"city": "Oslo"}]
