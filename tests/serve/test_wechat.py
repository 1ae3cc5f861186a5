"""The WeChat channel through a live server, with the test playing the WeChat platform.

Safe-mode bodies are built and replies opened with wechatpy, an implementation independent of
kefu's, so both directions are checked against someone else's reading of the protocol.
"""

from __future__ import annotations

import hashlib
import itertools
import time
import xml.etree.ElementTree as ET

import httpx
import pytest
from wechatpy.crypto import WeChatCrypto

from kefu.serve.channels.wechat import TEXT_ONLY_REPLY, WeChatConfig
from kefu.serve.service import HOLDING_REPLY
from tests.serve.conftest import FAQ_EN, FAQ_ZH, WECHAT, LiveServer

PATH = "/channels/wechat"
ACCOUNT = "gh_acmebank"
_msg_ids = itertools.count(24_000_000_000_000_000)


def signature(*parts: str) -> str:
    return hashlib.sha1("".join(sorted(parts)).encode()).hexdigest()


def signed_query(token: str = WECHAT.token, **extra: str) -> dict[str, str]:
    timestamp, nonce = str(int(time.time())), "184629371"
    return {
        "signature": signature(token, timestamp, nonce),
        "timestamp": timestamp,
        "nonce": nonce,
        **extra,
    }


def message_xml(user: str, msg_type: str = "text", msg_id: int | None = None, **fields: str) -> str:
    extra = "".join(f"<{name}><![CDATA[{value}]]></{name}>" for name, value in fields.items())
    msg_id = next(_msg_ids) if msg_id is None else msg_id
    return (
        f"<xml><ToUserName><![CDATA[{ACCOUNT}]]></ToUserName>"
        f"<FromUserName><![CDATA[{user}]]></FromUserName><CreateTime>{int(time.time())}</CreateTime>"
        f"<MsgType><![CDATA[{msg_type}]]></MsgType>{extra}<MsgId>{msg_id}</MsgId></xml>"
    )


def event_xml(user: str, event: str) -> str:
    return (
        f"<xml><ToUserName><![CDATA[{ACCOUNT}]]></ToUserName>"
        f"<FromUserName><![CDATA[{user}]]></FromUserName><CreateTime>{int(time.time())}</CreateTime>"
        f"<MsgType><![CDATA[event]]></MsgType><Event><![CDATA[{event}]]></Event></xml>"
    )


def post_plain(client: httpx.Client, xml: str) -> httpx.Response:
    return client.post(PATH, params=signed_query(), content=xml.encode("utf-8"))


def post_safe(
    client: httpx.Client, xml: str, app_id: str = WECHAT.app_id
) -> tuple[httpx.Response, WeChatCrypto]:
    """POST like WeChat in safe mode: the message encrypted, msg_signature in the query."""
    crypto = WeChatCrypto(WECHAT.token, WECHAT.encoding_aes_key, app_id)
    query = signed_query(encrypt_type="aes")
    envelope = ET.fromstring(crypto.encrypt_message(xml, query["nonce"], query["timestamp"]))
    body = (
        f"<xml><ToUserName><![CDATA[{ACCOUNT}]]></ToUserName>"
        f"<Encrypt><![CDATA[{envelope.findtext('Encrypt')}]]></Encrypt></xml>"
    )
    query["msg_signature"] = envelope.findtext("MsgSignature")
    return client.post(PATH, params=query, content=body.encode()), crypto


def text_reply(response: httpx.Response) -> dict[str, str]:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/xml")
    return {child.tag: child.text or "" for child in ET.fromstring(response.text)}


def assert_error(response: httpx.Response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code
    assert error["request_id"] == response.headers["x-request-id"]
    assert error["message"]
    return error


# ---- URL verification -------------------------------------------------------------------------


def test_url_verification(sqlite_server: LiveServer):
    with sqlite_server.client() as client:
        good = client.get(PATH, params=signed_query(echostr="5838479218127813673"))
        assert good.status_code == 200
        assert good.headers["content-type"].startswith("text/plain")
        assert good.text == "5838479218127813673"

        forged = client.get(PATH, params=signed_query(token="guess", echostr="1"))
        error = assert_error(forged, 403, "invalid_signature")
        assert error["type"] == "invalid_signature"

        missing = client.get(PATH, params={"echostr": "1", "timestamp": "1"})
        error = assert_error(missing, 400, "missing_parameter")
        assert "signature" in error["message"] and "nonce" in error["message"]


# ---- messages ---------------------------------------------------------------------------------


def test_plaintext_message_is_answered_and_stored(sqlite_server: LiveServer):
    msg_id = next(_msg_ids)
    with sqlite_server.client() as client:
        reply = text_reply(post_plain(client, message_xml("oPlain", msg_id=msg_id, Content=FAQ_ZH)))
    # The reply goes back to the customer, from the account.
    assert (reply["ToUserName"], reply["FromUserName"]) == ("oPlain", ACCOUNT)
    assert reply["MsgType"] == "text"
    assert abs(int(reply["CreateTime"]) - time.time()) < 60

    stored = sqlite_server.store.message_by_channel_id(str(msg_id))
    assert stored is not None and stored.role == "user" and stored.text == FAQ_ZH
    conversation = sqlite_server.store.conversation(stored.conversation_id)
    assert (conversation.channel, conversation.user) == ("wechat", "oPlain")
    answer = sqlite_server.store.reply_to(stored.id)
    assert answer is not None and answer.route == "faq"
    # The FAQ's citation follows the stored answer on a channel without links under the text.
    assert reply["Content"].startswith(answer.text)


def test_safe_mode_message_is_answered_encrypted(sqlite_server: LiveServer):
    with sqlite_server.client() as client:
        response, crypto = post_safe(client, message_xml("oSafe", Content=FAQ_EN))
    assert response.status_code == 200, response.text
    envelope = ET.fromstring(response.text)
    encrypted = envelope.findtext("Encrypt")
    timestamp, nonce = envelope.findtext("TimeStamp"), envelope.findtext("Nonce")
    assert envelope.findtext("MsgSignature") == signature(WECHAT.token, timestamp, nonce, encrypted)
    # wechatpy checks the signature again and the AppId at the end of the plaintext.
    inner = ET.fromstring(
        crypto.decrypt_message(response.text, envelope.findtext("MsgSignature"), timestamp, nonce)
    )
    assert (inner.findtext("ToUserName"), inner.findtext("FromUserName")) == ("oSafe", ACCOUNT)
    assert inner.findtext("MsgType") == "text"
    assert inner.findtext("Content")
    assert sqlite_server.store.count_messages("user") == 1


def test_a_retried_message_is_stored_once_and_answered_the_same(server: LiveServer):
    xml = message_xml("oRetry", Content=FAQ_ZH)
    with server.client() as client:
        first = text_reply(post_plain(client, xml))
        again = text_reply(post_plain(client, xml))
        third, _ = post_safe(client, xml)  # the mode may change between retries, too
    assert again["Content"] == first["Content"]
    assert ET.fromstring(third.text).findtext("Encrypt")
    assert server.store.count_messages("user") == 1
    assert server.store.count_messages("assistant") == 1


def eventually(read, timeout_s: float = 20.0):
    """Poll `read()` until it returns something other than None."""
    deadline = time.monotonic() + timeout_s
    while (value := read()) is None:
        assert time.monotonic() < deadline, "gave up waiting"
        time.sleep(0.05)
    return value


def test_late_answer_is_delivered_with_the_next_message(start_server, tmp_path):
    # A deadline no answer can meet: the first reply is the holding reply, the second carries it.
    impatient = WeChatConfig(**{**WECHAT.model_dump(), "reply_deadline_s": 0.001})
    live = start_server(f"sqlite:///{tmp_path / 'kefu.db'}", wechat=impatient)
    msg_id = next(_msg_ids)
    with live.client() as client:
        first = text_reply(post_plain(client, message_xml("oLate", msg_id=msg_id, Content=FAQ_EN)))
        assert first["Content"] == HOLDING_REPLY["en"]
        # The turn goes on after the holding reply: the question is stored, then the answer.
        stored = eventually(lambda: live.store.message_by_channel_id(str(msg_id)))
        answer = eventually(lambda: live.store.reply_to(stored.id)).text
        # The answer is handed to the channel just after it is stored; a customer's next message
        # comes seconds later, not within the same millisecond.
        time.sleep(0.5)
        second = text_reply(post_plain(client, message_xml("oLate", Content="thanks")))
    assert second["Content"].startswith(answer)


def test_non_text_messages_get_the_text_only_note(sqlite_server: LiveServer):
    with sqlite_server.client() as client:
        image = post_plain(
            client, message_xml("oPics", "image", PicUrl="http://mmbiz.qpic.cn/x.jpg", MediaId="m")
        )
        location = post_plain(
            client, message_xml("oPics", "location", Location_X="31.2", Label="上海")
        )
    for response in (image, location):
        reply = text_reply(response)
        assert reply["Content"] == TEXT_ONLY_REPLY
        assert reply["ToUserName"] == "oPics"
    assert "文字" in TEXT_ONLY_REPLY and "text" in TEXT_ONLY_REPLY
    assert sqlite_server.store.count_messages() == 0


def test_subscribe_greets_and_other_events_get_no_reply(sqlite_server: LiveServer):
    with sqlite_server.client() as client:
        greeting = text_reply(post_plain(client, event_xml("oNew", "subscribe")))
        other = post_plain(client, event_xml("oNew", "unsubscribe"))
    assert greeting["Content"] == sqlite_server.app.state.service.greeting(language_hint=None)
    assert greeting["Content"]
    assert (other.status_code, other.text) == (200, "success")


# ---- refusals ---------------------------------------------------------------------------------


def test_bad_signatures_are_refused_and_nothing_is_stored(sqlite_server: LiveServer):
    xml = message_xml("oForger", Content=FAQ_EN)
    with sqlite_server.client() as client:
        forged = client.post(PATH, params=signed_query(token="guess"), content=xml)
        unsigned = client.post(PATH, content=xml)
        safe_query = {**signed_query(encrypt_type="aes"), "msg_signature": "0" * 40}
        safe_forged = client.post(
            PATH, params=safe_query, content="<xml><Encrypt>abc</Encrypt></xml>"
        )
        other_account, _ = post_safe(client, xml, app_id="wxSomebodyElse")
    assert_error(forged, 403, "invalid_signature")
    assert_error(unsigned, 400, "missing_parameter")
    assert assert_error(safe_forged, 403, "invalid_signature")["param"] == "msg_signature"
    assert "wxSomebodyElse" in assert_error(other_account, 403, "invalid_app_id")["message"]
    assert sqlite_server.store.count_messages() == 0


@pytest.mark.parametrize(
    "body",
    [
        b"<xml><Content>unclosed</xml>",
        b"",
        b'<!DOCTYPE xml [<!ENTITY a "aaaaaaaa">]><xml><Content>&a;</Content></xml>',
        "<xml><ToUserName>gh</ToUserName><Content>没有发件人</Content></xml>".encode(),
    ],
    ids=["mismatched", "empty", "doctype", "no-sender"],
)
def test_malformed_xml_is_a_400(sqlite_server: LiveServer, body: bytes):
    with sqlite_server.client() as client:
        response = client.post(PATH, params=signed_query(), content=body)
    error = assert_error(response, 400, "invalid_xml")
    assert error["type"] == "invalid_request_error"


def test_oversize_body_is_refused_by_the_server(sqlite_server: LiveServer):
    xml = message_xml("oBig", Content="长" * 5000)  # 15 kB of UTF-8, over the test's 8 kB
    with sqlite_server.client() as client:
        response = post_plain(client, xml)
    assert response.status_code == 413
    assert response.json()["error"]["request_id"] == response.headers["x-request-id"]


def test_channel_is_off_without_a_token(start_server, tmp_path):
    live = start_server(f"sqlite:///{tmp_path / 'kefu.db'}", wechat=None)
    with live.client() as client:
        response = client.get(PATH, params=signed_query(echostr="1"))
    assert response.status_code in (404, 405)


def test_an_old_signed_request_is_refused(sqlite_server: LiveServer) -> None:
    # A signed URL captured an hour ago: the signature is right, the time is not.
    timestamp, nonce = str(int(time.time()) - 3600), "184629371"
    query = {
        "signature": signature(WECHAT.token, timestamp, nonce),
        "timestamp": timestamp,
        "nonce": nonce,
    }
    with sqlite_server.client() as client:
        response = client.post(
            PATH, params=query, content=message_xml("o-replay", Content="hi").encode()
        )
    assert_error(response, 403, "stale_timestamp")
    assert sqlite_server.store.count_messages() == 0
