"""`recipient-verify`: smap asks smapd's verifier, outside the jail, which
asks the MTA (the recipe's Postfix, tests/test_postfix_recipe.py) whether a
recipient exists, as Postfix's reject_unverified_recipient does.  What a
client sees: 550 5.1.1 at RCPT for a user Postfix does not know, 250 for
one it knows, the answer cached (no second probe in Postfix's log), and
4xx, never 5xx, when Postfix or the verifier is down."""

import os
import re

import pytest

from support.programs import wait_for
from test_postfix_recipe import Recipe

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="smap and smapd drop to nobody")

VERIFY = "smap: recipient-verify yes\nsmapd: recipient-verify yes\n"


def rcpt(s, address):
    return s.cmd(f"RCPT TO:<{address}>")


def test_unknown_users_are_refused_at_rcpt_and_the_mta_down_means_4xx(tmp_path, public_tmp, loopback_dns):
    with Recipe(tmp_path, public_tmp, loopback_dns, smap_extra=VERIFY) as r:
        r.postfix.add_mailbox("bob@example.net")
        r.start_smapd()
        wait_for(lambda: os.path.exists(r.smap.spool / ".verify"), what="the verifier's socket")
        s = r.smap.connect()
        assert s.reply()[0] == 220
        assert s.cmd("EHLO client.example.test")[0] == 250
        assert s.cmd("MAIL FROM:<alice@example.org>")[0] == 250
        assert rcpt(s, "bob@example.net")[0] == 250
        code, lines = rcpt(s, "nosuch@example.net")
        assert lines[0].startswith("550 5.1.1 <nosuch@example.net>: "), lines
        assert "Recipient address rejected: undeliverable address" in lines[0]
        # Again, and in other case: the verifier's cache answers.
        assert rcpt(s, "nosuch@EXAMPLE.net")[0] == 550
        assert rcpt(s, "bob@example.net")[0] == 250
        # A domain smap does not receive for is not smapd's to verify
        # (here it is refused as relaying, before any question).
        assert rcpt(s, "x@far.example")[0] == 554
        probes = re.findall(r"postfix/smap/smtpd\[\d+\]: NOQUEUE: reject: RCPT from localhost\[127\.0\.0\.1\]: "
                            r"550 5\.1\.1 <nosuch@example\.net>", r.postfix.log())
        assert len(probes) == 1, r.postfix.log()
        # Postfix stopped: an address not in the cache gets a 4xx; what the
        # cache knows still holds.
        r.postfix.stop()
        code, lines = rcpt(s, "carol@example.net")
        assert lines[0].startswith("451 4.4.3 "), lines
        assert rcpt(s, "bob@example.net")[0] == 250
        assert rcpt(s, "nosuch@example.net")[0] == 550
        # The verifier down (smapd stopped): 451 too, and a log line.
        text = r.stop_smapd()
        code, lines = rcpt(s, "dave@example.net")
        assert lines[0].startswith("451 4.4.3 "), lines
        assert s.cmd("QUIT")[0] == 221
        s.close()
        r.smap.syslog.wait(r"cannot verify <dave@example\.net>: smapd's verifier does not answer")
        assert not [f for f in os.listdir(r.smap.spool) if f.startswith("sma")]
    assert re.search(r"verify <nosuch@example\.net>: 550 5\.1\.1 .* \(probed\)", text), text
    assert re.search(r"verify <nosuch@EXAMPLE\.net>: 550 5\.1\.1 .* \(cached\)", text), text
    assert re.search(r"verify <carol@example\.net>: cannot connect to smtp:127\.0\.0\.1:\d+", text), text
