"""sections.redact: no secret reaches a message, whatever shape it comes in."""
import pytest
from hypothesis import given, settings, strategies as st

from sections.redact import mask_secrets, mask_url, scrub

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


@pytest.mark.parametrize("text", [
    'missing "=" after "postgresql//u:hunter2@db.example/postgres"',
    "postgresql:/u:hunter2@db.example/postgres",
    "connect to u:hunter2@db.example:5432 failed",
    "postgres://u:hun@ter2@db/x?sslmode=require and host=db password=hunter2",
])
def test_a_malformed_url_never_shows_its_password(text):
    assert "hunter2" not in mask_secrets(text)
    assert "hun" not in mask_secrets(text).replace("hunter", "")  # nor a piece of it


@settings(max_examples=300, deadline=None)
@given(scheme=st.sampled_from(["postgresql://", "postgresql//", "postgresql:/", "postgres:", ""]),
       user=st.text("abcxyz_.0129-", min_size=1, max_size=8),
       password=st.text(st.characters(blacklist_categories=("Cs", "Zs", "Cc"), blacklist_characters="'\""),
                        min_size=4, max_size=24).filter(lambda p: p.strip() == p),
       host=st.sampled_from(["db.example.com", "db", "aws-0-eu.pooler.supabase.com:6543"]),
       around=st.sampled_from(['cannot open {}', 'missing "=" after "{}"', "{}", "error: {}: refused"]))
def test_no_password_in_any_message_whatever_the_url_shape(scheme, user, password, host, around):
    secret = "S3cr3t" + password  # never a substring of the rest of the message
    message = around.format(f"{scheme}{user}:{secret}@{host}/postgres")
    assert secret not in mask_secrets(message)
