"""core.redact: no secret reaches a message, whatever shape it comes in."""
import pytest

from core.redact import mask_secrets, mask_url, scrub

# -- mask_url ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("url, expected", [
    ("postgresql://user:secret@db.example.com:5432/app?sslmode=require",
     "postgresql://user:***@db.example.com:5432/app?sslmode=require"),
    ("postgresql://postgres.abcdefgh:S3cr%40t%2Fpw@aws-0-eu-central-1.pooler.supabase.com:6543/postgres",
     "postgresql://postgres.abcdefgh:***@aws-0-eu-central-1.pooler.supabase.com:6543/postgres"),
    ("postgres://u:p@ss/w0rd@host/db", "postgres://u:***@host/db"),  # unescaped @ and / in the password
    ("postgresql://u:secret@h1:5432,h2:5433/db", "postgresql://u:***@h1:5432,h2:5433/db"),
    ("postgresql://host/db?user=u&password=secret&sslmode=require",
     "postgresql://host/db?user=u&password=***&sslmode=require"),
    ("host=db port=5432 password=secret user=u", "host=db port=5432 password=*** user=u"),
    ("host=db password = 'sec ret\\' x' user=u", "host=db password = *** user=u"),
    ("postgresql://user@host/db", "postgresql://user@host/db"),
    ("postgresql://postgres:@/postgres?host=/tmp/x", "postgresql://postgres:@/postgres?host=/tmp/x"),
    ("postgresql:///db?host=/var/run/postgresql", "postgresql:///db?host=/var/run/postgresql"),
])
def test_mask_url(url, expected):
    assert mask_url(url) == expected


def test_mask_url_never_leaks_the_secret():
    for url in ["postgresql://a:topsecret@h/d", "postgresql://h/d?password=topsecret",
                "password=topsecret", "postgresql://a:topsecret@h/d?sslpassword=topsecret"]:
        assert "topsecret" not in mask_url(url)
    assert mask_url(None) == ""


def test_scrub_hides_keys_and_bearer_tokens():
    assert scrub("Incorrect API key provided: sk-proj-abc123XYZ") == "Incorrect API key provided: sk-***"
    assert "tok3n" not in scrub("Authorization: Bearer tok3n.value")


def test_mask_secrets_hides_urls_and_keys_in_one_message():
    text = "cannot reach postgresql://u:hunter2@db.example/postgres with key sk-abcdef123"
    masked = mask_secrets(text)
    assert "hunter2" not in masked and "abcdef123" not in masked
    assert "postgresql://u:***@db.example/postgres" in masked
