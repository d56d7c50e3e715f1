"""A local stand-in for the parts of Stripe's API MemHub uses, served over real HTTP on loopback.

The real `stripe` SDK talks to it (`STRIPE_API_BASE`): it parses Stripe's form encoding
(`line_items[0][price_data][currency]=usd`), answers Stripe-shaped JSON objects, replays a POST with a
seen `Idempotency-Key` exactly (as Stripe does) and records every request so tests can check what was
sent. Test-side methods (`complete`, `renew`, `dispute`, ...) do what a customer and the card network
would, and return the event Stripe would send, for the test to sign and deliver to our webhook.

Endpoints: POST/GET /v1/checkout/sessions[/id], GET /v1/payment_intents/id, GET /v1/charges/id,
POST /v1/refunds, GET/DELETE /v1/subscriptions/id, GET /v1/invoices/id, GET /v1/disputes/id,
POST /v1/invoiceitems.
"""

from __future__ import annotations

import json
import re
import secrets
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import stripe

PERIOD_S = 30 * 86400


def decode_form(body: str) -> dict[str, Any]:
    """Stripe's nested form encoding back into dicts and lists."""
    out: dict[str, Any] = {}
    for key, value in parse_qsl(body, keep_blank_values=True):
        parts = re.findall(r"[^\[\]]+", key)
        node: Any = out
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            nxt: Any = value if last else ({} if not parts[i + 1].isdigit() else [])
            if isinstance(node, list):
                idx = int(part)
                while len(node) <= idx:
                    node.append(None)
                if last:
                    node[idx] = value
                elif node[idx] is None:
                    node[idx] = nxt
                node = node[idx]
            else:
                if last:
                    node[part] = value
                else:
                    node = node.setdefault(part, nxt)
    return out


@dataclass
class Recorded:
    method: str
    path: str
    params: dict[str, Any]
    idempotency_key: str


@dataclass
class StripeStandIn:
    objects: dict[str, dict[str, Any]] = field(default_factory=dict)
    requests: list[Recorded] = field(default_factory=list)
    idempotent: dict[str, tuple[int, dict[str, Any]]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    server: ThreadingHTTPServer | None = None

    # --- server ---------------------------------------------------------------------------------

    def start(self) -> StripeStandIn:
        standin = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _answer(self, method: str) -> None:
                url = urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length).decode() if length else ""
                params = decode_form(body or url.query)
                key = self.headers.get("Idempotency-Key", "") or ""
                status, obj = standin.handle(method, url.path, params, key, dict(self.headers))
                data = json.dumps(obj).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Request-Id", "req_" + secrets.token_hex(6))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                self._answer("GET")

            def do_POST(self) -> None:
                self._answer("POST")

            def do_DELETE(self) -> None:
                self._answer("DELETE")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def handle(
        self, method: str, path: str, params: dict[str, Any], key: str, headers: dict[str, str]
    ) -> tuple[int, dict[str, Any]]:
        with self.lock:
            if not headers.get("Authorization", "").startswith("Bearer sk_"):
                return 401, {
                    "error": {"type": "invalid_request_error", "message": "Invalid API Key provided"}
                }
            self.requests.append(Recorded(method, path, params, key))
            replay_key = f"{method} {path} {key}" if key and method != "GET" else ""
            if replay_key and replay_key in self.idempotent:
                return self.idempotent[replay_key]
            answer = self._route(method, path, params)
            if replay_key and answer[0] < 500:
                self.idempotent[replay_key] = answer
            return answer

    def _error(self, message: str, status: int = 400) -> tuple[int, dict[str, Any]]:
        return status, {"error": {"type": "invalid_request_error", "message": message}}

    def _get(self, object_id: str, kind: str) -> tuple[int, dict[str, Any]]:
        obj = self.objects.get(object_id)
        if obj is None or obj["object"] != kind:
            return self._error(f"No such {kind}: '{object_id}'", 404)
        return 200, obj

    def _route(self, method: str, path: str, params: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        parts = path.strip("/").split("/")
        if parts[:3] == ["v1", "checkout", "sessions"]:
            if method == "POST" and len(parts) == 3:
                return 200, self._session_create(params)
            if method == "GET" and len(parts) == 4:
                return self._get(parts[3], "checkout.session")
        kinds = {
            "payment_intents": "payment_intent",
            "charges": "charge",
            "subscriptions": "subscription",
            "invoices": "invoice",
            "disputes": "dispute",
        }
        if len(parts) == 3 and parts[1] in kinds:
            if method == "GET":
                return self._get(parts[2], kinds[parts[1]])
            if method == "DELETE" and parts[1] == "subscriptions":
                status, sub = self._get(parts[2], "subscription")
                if status == 200:
                    sub["status"] = "canceled"
                return status, sub
        if parts == ["v1", "refunds"] and method == "POST":
            return self._refund_create(params)
        if parts == ["v1", "invoiceitems"] and method == "POST":
            item = {
                "id": self._id("ii"),
                "object": "invoiceitem",
                "amount": int(params["amount"]),
                "currency": params["currency"],
                "customer": params["customer"],
                "subscription": params.get("subscription"),
                "description": params.get("description", ""),
            }
            self.objects[item["id"]] = item
            return 200, item
        return self._error(f"Unrecognized request URL ({method}: {path})", 404)

    def _id(self, prefix: str) -> str:
        return f"{prefix}_{secrets.token_hex(10)}"

    def _session_create(self, params: dict[str, Any]) -> dict[str, Any]:
        line = params["line_items"][0]
        amount = int(line["price_data"]["unit_amount"]) * int(line["quantity"])
        sid = self._id("cs_test")
        session = {
            "id": sid,
            "object": "checkout.session",
            "mode": params["mode"],
            "status": "open",
            "payment_status": "unpaid",
            "url": f"https://checkout.stripe.test/c/pay/{sid}",
            "client_reference_id": params.get("client_reference_id"),
            "metadata": params.get("metadata", {}),
            "amount_total": amount,
            "currency": line["price_data"]["currency"],
            "customer": self._id("cus"),
            "payment_intent": None,
            "subscription": None,
            "_params": params,
        }
        self.objects[sid] = session
        return session

    def _refund_create(self, params: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        pi = self.objects.get(params.get("payment_intent", ""))
        if pi is None:
            return self._error("No such payment_intent")
        charge = self.objects[pi["latest_charge"]]
        amount = int(params.get("amount") or charge["amount"] - charge["amount_refunded"])
        if amount > charge["amount"] - charge["amount_refunded"]:
            return self._error(f"Refund amount ({amount}) is greater than unrefunded amount on charge")
        charge["amount_refunded"] += amount
        charge["refunded"] = charge["amount_refunded"] >= charge["amount"]
        refund = {
            "id": self._id("re"),
            "object": "refund",
            "amount": amount,
            "status": "succeeded",
            "payment_intent": pi["id"],
            "charge": charge["id"],
            "metadata": params.get("metadata", {}),
        }
        self.objects[refund["id"]] = refund
        return 200, refund

    # --- what a customer and the card network do (test side) -----------------------------------

    def event(self, event_type: str, obj: dict[str, Any], *, event_id: str = "") -> str:
        """The JSON body of the event Stripe would send (only public fields of the object)."""
        public = {k: v for k, v in obj.items() if not k.startswith("_")}
        return json.dumps(
            {
                "id": event_id or self._id("evt"),
                "object": "event",
                "type": event_type,
                "created": int(time.time()),
                "data": {"object": public},
            }
        )

    def _payment(self, *, amount: int, currency: str, metadata: dict[str, Any]) -> dict[str, Any]:
        pi_id, ch_id = self._id("pi"), self._id("ch")
        self.objects[pi_id] = {
            "id": pi_id,
            "object": "payment_intent",
            "amount": amount,
            "currency": currency,
            "status": "succeeded",
            "metadata": metadata,
            "latest_charge": ch_id,
        }
        self.objects[ch_id] = {
            "id": ch_id,
            "object": "charge",
            "amount": amount,
            "amount_refunded": 0,
            "currency": currency,
            "status": "succeeded",
            "payment_intent": pi_id,
            "refunded": False,
            "disputed": False,
            # Stripe copies nothing of ours onto a subscription invoice's charge: found via the PI.
            "metadata": {},
        }
        return self.objects[pi_id]

    def complete(self, session_id: str, *, paid: bool = True) -> list[str]:
        """The customer finishes checkout: the events Stripe sends (completed; plus invoice.paid)."""
        with self.lock:
            s = self.objects[session_id]
            s["status"] = "complete"
            if not paid:
                s["payment_status"] = "unpaid"
                return [self.event("checkout.session.completed", s)]
            return self._settle(s, "checkout.session.completed")

    def settle(self, session_id: str, *, succeed: bool = True) -> list[str]:
        with self.lock:
            s = self.objects[session_id]
            if not succeed:
                return [self.event("checkout.session.async_payment_failed", s)]
            return self._settle(s, "checkout.session.async_payment_succeeded")

    def _settle(self, s: dict[str, Any], event_type: str) -> list[str]:
        s["payment_status"] = "paid"
        params = s["_params"]
        events: list[str] = []
        if s["mode"] == "subscription":
            sub_id = self._id("sub")
            end = int(time.time()) + PERIOD_S
            self.objects[sub_id] = {
                "id": sub_id,
                "object": "subscription",
                "status": "active",
                "customer": s["customer"],
                "metadata": params.get("subscription_data", {}).get("metadata", {}),
                "items": {"object": "list", "data": [{"current_period_end": end}]},
                "_amount": s["amount_total"],
                "_currency": s["currency"],
            }
            s["subscription"] = sub_id
            invoice = self._invoice(sub_id, amount=s["amount_total"], reason="subscription_create", end=end)
            events = [self.event(event_type, s), self.event("invoice.paid", invoice)]
        else:
            meta = params.get("payment_intent_data", {}).get("metadata", {})
            pi = self._payment(amount=s["amount_total"], currency=s["currency"], metadata=meta)
            self.objects[pi["latest_charge"]]["metadata"] = dict(meta)  # a one-time charge carries the PI's
            s["payment_intent"] = pi["id"]
            events = [self.event(event_type, s)]
        return events

    def _invoice(
        self, sub_id: str, *, amount: int, reason: str, end: int, paid: bool = True
    ) -> dict[str, Any]:
        sub = self.objects[sub_id]
        in_id = self._id("in")
        pi = self._payment(amount=amount, currency=sub["_currency"], metadata={}) if paid else None
        invoice = {
            "id": in_id,
            "object": "invoice",
            "status": "paid" if paid else "open",
            "amount_paid": amount if paid else 0,
            "amount_due": amount,
            "currency": sub["_currency"],
            "billing_reason": reason,
            "customer": sub["customer"],
            # The current API shape: subscription under parent, payment under payments.
            "parent": {"subscription_details": {"subscription": sub_id, "metadata": sub["metadata"]}},
            "payments": {"data": [{"payment": {"payment_intent": pi["id"]}}] if pi else []},
            "lines": {"data": [{"period": {"start": end - PERIOD_S, "end": end}}]},
        }
        self.objects[in_id] = invoice
        return invoice

    def renew(self, sub_id: str, *, paid: bool = True) -> str:
        with self.lock:
            sub = self.objects[sub_id]
            end = sub["items"]["data"][0]["current_period_end"] + PERIOD_S
            items = [
                o
                for o in self.objects.values()
                if o["object"] == "invoiceitem" and o.get("subscription") == sub_id and not o.get("_invoiced")
            ]
            amount = sub["_amount"] + sum(int(i["amount"]) for i in items)
            invoice = self._invoice(sub_id, amount=amount, reason="subscription_cycle", end=end, paid=paid)
            if paid:
                for i in items:
                    i["_invoiced"] = True
                sub["items"]["data"][0]["current_period_end"] = end
                sub["status"] = "active"
            else:
                sub["status"] = "past_due"
            return self.event("invoice.paid" if paid else "invoice.payment_failed", invoice)

    def cancel(self, sub_id: str) -> str:
        with self.lock:
            self.objects[sub_id]["status"] = "canceled"
            return self.event("customer.subscription.deleted", self.objects[sub_id])

    def expire(self, session_id: str) -> str:
        with self.lock:
            self.objects[session_id]["status"] = "expired"
            return self.event("checkout.session.expired", self.objects[session_id])

    def refund_event(self, pi_id: str, amount: int | None = None) -> str:
        """A refund made in Stripe's dashboard: the charge.refunded event."""
        with self.lock:
            status, _ = self._refund_create(
                {"payment_intent": pi_id, **({"amount": amount} if amount else {})}
            )
            assert status == 200
            return self.event("charge.refunded", self.objects[self.objects[pi_id]["latest_charge"]])

    def dispute(self, pi_id: str) -> str:
        with self.lock:
            charge = self.objects[self.objects[pi_id]["latest_charge"]]
            charge["disputed"] = True
            dp = {
                "id": self._id("dp"),
                "object": "dispute",
                "charge": charge["id"],
                "payment_intent": pi_id,
                "amount": charge["amount"],
                "status": "needs_response",
                "reason": "fraudulent",
            }
            self.objects[dp["id"]] = dp
            return self.event("charge.dispute.created", dp)

    def calls(self, method: str, path_prefix: str) -> list[Recorded]:
        return [r for r in self.requests if r.method == method and r.path.startswith(path_prefix)]


def sign(payload: str, secret: str, *, timestamp: int | None = None) -> str:
    """The Stripe-Signature header for `payload`, as Stripe computes it."""
    return str(stripe.WebhookSignature.generate_signature_header(payload, secret, timestamp=timestamp))
