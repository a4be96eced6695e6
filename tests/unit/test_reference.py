"""Image references and patterns in the policy follow Docker's grammar (distribution/reference)."""

from __future__ import annotations

import pytest

from acgs_remediate import reference
from acgs_remediate.config import parse_policy
from acgs_remediate.errors import EXIT_USAGE, UsageError

HEX64 = "0123456789abcdef" * 4


@pytest.mark.parametrize(
    "ref",
    [
        "big:1.0",
        "rocm/pytorch:latest",
        "nvcr.io/nvidia/tritonserver:24.10-py3",
        "localhost:5000/pinned/base@sha256:" + HEX64,
        "127.0.0.55:5000/test/bb:v1",
        "[::1]:5000/app:1",
        "app:1.0@sha256:" + HEX64,
        "a__b/c---d.e_f:_tag",
        "Registry.Example.com/app",  # the domain may hold uppercase letters, the path may not
        "sha256:" + HEX64,  # an image ID reads as name:tag
        "app:" + "x" * 128,
        "a/" * 126 + "bcd",  # path of exactly 255 characters
    ],
)
def test_valid_references_are_accepted(ref):
    assert reference.is_valid(ref) and reference.describe(ref) is None


@pytest.mark.parametrize(
    ("ref", "why"),
    [
        ("Big Image!!:1.0", "a space is not allowed; '!' is not allowed; uppercase letters are not allowed"),
        ("Big:1.0", "uppercase letters are not allowed in a repository name"),
        ("app/Web:1", "uppercase letters are not allowed in a repository name"),
        ("app:", "a ':' must be followed by a tag"),
        ("app:-x", "a tag must start with a letter, digit or '_'"),
        ("app:" + "x" * 129, "the tag is 129 characters long"),
        ("app:1:2", "a ':' is allowed only before the tag"),
        ("app@sha256:123", "the digest after '@' must be algorithm:hex"),
        ("https://registry/app:1", "a URL scheme is not allowed"),
        ("registry:abc/app", "the registry port 'abc' must be a number"),
        ("a//b", "empty part"),
        ("-app", "must start and end with a lowercase letter or digit"),
        ("app-", "must start and end with a lowercase letter or digit"),
        ("a___b", "must start and end with a lowercase letter or digit"),
        ("x/" + "a/" * 128 + "b", "longer than 255 characters"),  # x is the domain; the path has 257
        ("", "cannot be empty"),
        ("app\t:1", "whitespace ('\\t') is not allowed"),
        ("café:1", "'é' is not allowed"),
        ("app:ｔag", "'ｔ' is not allowed"),  # Go's \w is ASCII only
    ],
)
def test_invalid_references_say_why(ref, why):
    assert not reference.is_valid(ref)
    assert why in (reference.describe(ref) or "")


@pytest.mark.parametrize(
    "pattern",
    [
        "postgres:*",
        "*:stable",
        "*",
        "acgs-base/*",
        "localhost:5000/*",
        "*@sha256:*",
        "*/postgres@*",
        "acgs/[ab]*:v?",
        "*-*",
        "sha256:*",
    ],
)
def test_patterns_that_can_match_a_reference_are_accepted(pattern):
    assert reference.describe_pattern(pattern) is None


@pytest.mark.parametrize(
    ("pattern", "why"),
    [
        ("Postgres:*", "uppercase letters are not allowed"),
        ("post gres:*", "a space is not allowed"),
        ("", "cannot be empty"),
        ("app:*:*:x", "a ':' is allowed only before the tag"),
        ("https://reg/*", "a URL scheme is not allowed"),
    ],
)
def test_patterns_that_match_no_reference_say_why(pattern, why):
    assert why in (reference.describe_pattern(pattern) or "")


@pytest.mark.parametrize(
    ("policy", "key", "why"),
    [
        (
            {"oversized_images": [{"ref": "big:1.0"}, {"ref": "Big Image!!:1.0"}]},
            "acgs_policy.oversized_images.1.ref: 'Big Image!!:1.0' is not a valid image reference",
            "a space is not allowed",
        ),
        (
            {"services": [{"name": "gs", "image": "GS:latest", "context": "gs"}]},
            "acgs_policy.services.0.image: 'GS:latest' is not a valid image reference",
            "uppercase letters are not allowed in a repository name",
        ),
        (
            {"protected_patterns": ["postgres:*", "My DB:*"]},
            "acgs_policy.protected_patterns.1: 'My DB:*' is not a valid image pattern",
            "a space is not allowed",
        ),
    ],
)
def test_a_bad_reference_in_the_policy_names_file_key_and_reason(policy, key, why):
    with pytest.raises(UsageError) as exc:
        parse_policy(policy, "group_vars/all.yml")
    message = exc.value.message
    assert exc.value.exit_code == EXIT_USAGE and "\n" not in message
    assert message.startswith("invalid policy in group_vars/all.yml: " + key) and why in message
    assert "[registry[:port]/]name[:tag][@digest]" in (exc.value.hint or "")


def test_registry_names_are_host_and_port():
    assert reference.is_valid_domain("registry.local:5000") and reference.is_valid_domain("127.0.0.55:5000")
    assert not reference.is_valid_domain("https://registry.local") and not reference.is_valid_domain("reg:x")


@pytest.mark.parametrize(
    ("policy", "key"),
    [
        ({"registry": "https://127.0.0.55:5000"}, "acgs_policy.registry: 'https://127.0.0.55:5000' is not a valid"),
        ({"registry": "127.0.0.55:5000/ACGS"}, "acgs_policy.registry"),
        ({"build": {"runtime_base": "Python:3.11"}}, "acgs_policy.build.runtime_base: 'Python:3.11'"),
        ({"build": {"wheelhouse_image": "wheels house:1"}}, "acgs_policy.build.wheelhouse_image"),
        (
            {"services": [{"name": "gs", "image": "gs:1", "context": ".", "runtime_base": "py 3"}]},
            "acgs_policy.services.0.runtime_base",
        ),
    ],
)
def test_every_later_reference_field_is_checked_too(policy, key):
    with pytest.raises(UsageError) as exc:
        parse_policy(policy, "all.yml")
    assert key in exc.value.message


def test_registry_names_with_a_namespace_are_accepted():
    assert parse_policy({"registry": "127.0.0.55:5000/acgs"}, "all.yml").registry == "127.0.0.55:5000/acgs"
    assert reference.is_valid_registry("registry.local") and not reference.is_valid_registry("reg/UPPER")
