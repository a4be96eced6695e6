"""The policy: the report's defaults load, sizes/durations parse, bad values name the key."""

from __future__ import annotations

import pytest

from acgs_remediate.config import Policy, parse_policy
from acgs_remediate.errors import EXIT_USAGE, UsageError
from acgs_remediate.units import human_size, parse_duration, parse_size


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("300MB", 300_000_000),
        ("1.5GB", 1_500_000_000),
        ("4096", 4096),
        (4096, 4096),
        ("2 GiB", 2 * 2**30),
        ("15mb", 15_000_000),
    ],
)
def test_sizes_parse_in_docker_units(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("bad", ["lots", "-1", "12 parsecs", "", True, -5])
def test_unreadable_sizes_are_rejected(bad):
    with pytest.raises(ValueError):
        parse_size(bad)


@pytest.mark.parametrize(
    ("text", "seconds"), [("90s", 90), ("15m", 900), ("2h", 7200), ("1d12h", 129600), (300, 300)]
)
def test_durations_parse(text, seconds):
    assert parse_duration(text) == seconds


def test_human_size_matches_docker_cli_style():
    assert human_size(70_700_000_000) == "70.7GB"
    assert human_size(237_000_000) == "237MB"
    assert human_size(512) == "512B"


def test_report_defaults_apply_when_policy_is_empty():
    policy = parse_policy({}, "group_vars/all.yml")
    assert policy.size_cap == 300_000_000
    assert policy.criteria.storage_reduction_pct == 90
    assert policy.criteria.build_time_max == 300
    assert policy.rollback_keep == 2


def test_bad_policy_value_names_file_key_and_problem():
    with pytest.raises(UsageError) as exc:
        parse_policy({"size_cap": "huge", "rollback_keep": 2}, "inventory/group_vars/all.yml")
    assert exc.value.exit_code == EXIT_USAGE
    assert "inventory/group_vars/all.yml" in exc.value.message
    assert "acgs_policy.size_cap" in exc.value.message
    assert "\n" not in exc.value.message


def test_unknown_policy_key_is_an_error_not_ignored():
    with pytest.raises(UsageError, match="acgs_policy.size_kap"):
        parse_policy({"size_kap": "300MB"}, "all.yml")


def test_policy_must_be_a_mapping():
    with pytest.raises(UsageError, match="must be a mapping"):
        parse_policy(["size_cap"], "all.yml")


def test_duplicate_service_names_are_rejected():
    svc = {"name": "gs", "image": "gs:latest", "context": "gs"}
    with pytest.raises(UsageError, match="repeated: gs"):
        parse_policy({"services": [svc, svc]}, "all.yml")


def test_protected_patterns_match_tags():
    policy = Policy.model_validate({"protected_patterns": ["postgres:*", "*:stable"]})
    assert policy.is_protected("postgres:15") == "postgres:*"
    assert policy.is_protected("acgs/gs:stable") == "*:stable"
    assert policy.is_protected("rocm/pytorch:latest") is None
