"""A state machine test of the vetting workflow.

Hypothesis drives random sequences of the real transitions in vetting.workflow
on two to five applications: staff of every role (among them a server admin
who verifies and then tries to decide), applicants confirming, answering,
withdrawing and erasing, and invitations issued, revoked, used, expired and
followed on the FakeSynapse of the fast unit tests. After every step it checks
what an applicant or an auditor relies on: DESIGN.md's states and arrows,
refusals that change nothing, an audit event for every change, the four-eyes
rule, one live token per application and per username, where mail may go and
what erasure leaves behind.
"""

from __future__ import annotations

import copy
import json
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import time_machine
from django.conf import settings as django_settings
from django.db import transaction
from django.test import override_settings
from django.utils import timezone
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.internal.conjecture import engine as hypothesis_engine
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from evidence.models import Evidence
from evidence.validation import validate_upload
from notifications.models import OutboundEmail
from tests.factories import ERASED_FIELDS, TEXT_BYTES, upload
from tests.vetting.homeservers import FakeSynapse
from vetting import audit, links, matrix, workflow
from vetting.models import Application, AuditEvent, InformationReply, Invitation, StaffNote

pytestmark = pytest.mark.django_db
Status = Application.Status

# Each step costs a few dozen queries and homeserver calls: about 30 s in all.
machine_settings = settings(
    max_examples=50,
    stateful_step_count=50,
    deadline=None,
    # Nothing saved under .hypothesis/ in the working tree; a failure prints its steps.
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)

# DESIGN.md's diagram with the arrows vetting/workflow.py's docstring adds (release,
# reject from the queue, reopen, withdraw when approved or invited, re-issue while invited), and
# erasure, which withdraws an application still open and leaves a closed one as it is.
DESIGN_STATES = {
    "unconfirmed",
    "submitted",
    "in_review",
    "info_requested",
    "recommended",
    "approved",
    "rejected",
    "invited",
    "joined",
    "withdrawn",
}
# "any open state ──applicant withdraws──▶ withdrawn": approved and invited too (an invited
# one's token is revoked first). Erasure withdraws them too, but not while invited.
OPEN_FOR_ERASURE = [
    Status.UNCONFIRMED,
    Status.SUBMITTED,
    Status.IN_REVIEW,
    Status.INFO_REQUESTED,
    Status.RECOMMENDED,
    Status.APPROVED,
]
OPEN_FOR_WITHDRAWAL = [*OPEN_FOR_ERASURE, Status.INVITED]
ARROWS: dict[str, set[tuple[str, str]]] = {
    # Elsewhere (entered by staff, or withdrawn before confirming) only the address is confirmed.
    "confirm_email": {(Status.UNCONFIRMED, Status.SUBMITTED)}
    | {(status, status) for status in Status.values if status != Status.UNCONFIRMED},
    "claim": {(Status.SUBMITTED, Status.IN_REVIEW)},
    "release": {(Status.IN_REVIEW, Status.SUBMITTED)},
    "record_verification": {(Status.IN_REVIEW, Status.RECOMMENDED)},
    "request_information": {
        (Status.IN_REVIEW, Status.INFO_REQUESTED),
        (Status.RECOMMENDED, Status.INFO_REQUESTED),
    },
    "add_information": {(Status.INFO_REQUESTED, Status.SUBMITTED)},
    "approve": {(Status.RECOMMENDED, Status.APPROVED)},
    "reject": {
        (source, Status.REJECTED)
        for source in (Status.SUBMITTED, Status.IN_REVIEW, Status.INFO_REQUESTED, Status.RECOMMENDED)
    },
    "reopen": {
        (source, target)
        for source in (Status.APPROVED, Status.REJECTED)
        for target in (Status.RECOMMENDED, Status.SUBMITTED)
    },
    "withdraw": {(source, Status.WITHDRAWN) for source in OPEN_FOR_WITHDRAWAL},
    "erase_application": {(source, Status.WITHDRAWN) for source in OPEN_FOR_ERASURE}
    | {(closed, closed) for closed in (Status.REJECTED, Status.WITHDRAWN, Status.JOINED)},
    "issue_invitation": {(Status.APPROVED, Status.INVITED)},
    "reissue_invitation": {(Status.APPROVED, Status.INVITED), (Status.INVITED, Status.INVITED)},
    "revoke_invitation": {(Status.INVITED, Status.APPROVED)},
    "sync_invitations": {(Status.INVITED, Status.JOINED), (Status.INVITED, Status.APPROVED)},
    "add_note": set(),
}
SOURCES = {name: transition.sources for name, transition in workflow.STAFF_TRANSITIONS.items()}

# The audit action each accepted step must write about its application.
AUDIT_ACTION = {
    "confirm_email": "application.confirmed",
    "claim": "application.claimed",
    "release": "application.released",
    "record_verification": "application.verification_recorded",
    "request_information": "application.information_requested",
    "add_information": "application.information_added",
    "approve": "application.approved",
    "reject": "application.rejected",
    "reopen": "application.reopened",
    "withdraw": "application.withdrawn",
    "erase_application": "application.erased",
    "issue_invitation": "invitation.issued",
    "reissue_invitation": "invitation.reissued",
    "revoke_invitation": "invitation.revoked",
    "add_note": "note.added",
}
SYNC_ACTIONS = {
    Status.JOINED: {"invitation.completed"},
    Status.APPROVED: {"invitation.expired", "invitation.gone_on_server"},
}
DECISIONS = {"application.approved", "application.rejected", "invitation.issued", "invitation.reissued"}
# A failed homeserver call is audited even though nothing else changes.
MATRIX_FAILURE_ACTIONS = {"invitation.issue_failed", "invitation.revoke_failed"}
# Transitions the homeserver may still refuse when their guard allows them.
MATRIX_TRANSITIONS = {"issue_invitation", "reissue_invitation", "revoke_invitation"}
# DESIGN.md, "E-mails": what the applicant is told.
APPLICANT_MAIL = {
    "request_information": "information-requested",
    "approve": "application-approved",
    "reject": "application-rejected",
    "withdraw": "application-withdrawn",
}
# The applicant mails that link to the status page: a confirmation link stands in for it
# while the address is unconfirmed.
LINKING_MAIL = {"application-entered", "information-requested", "application-approved", "invitation-token"}

STAFF = [
    "agent",
    "second_agent",
    "server_admin",
    "second_server_admin",
    "inviting_admin",
    "superadmin",
    "outsider",
]
# Distinct names and addresses, so a mail or a row can be traced to its applicant.
APPLICANTS = [
    ("Alma Quist", "alma.quist@applicant.example"),
    ("Bruno Yates", "bruno.yates@applicant.example"),
    ("Cleo Vance", "cleo.vance@applicant.example"),
    ("Dara Okafor", "dara.okafor@applicant.example"),
    ("Emil Novak", "emil.novak@applicant.example"),
]
# What staff and applicants type; the last of each (two verifications) is what a form refuses.
VERIFICATIONS = {  # (score, days ago)
    "score 4, today": (4, 0),
    "score 2, last week": (2, 7),
    "score 5, yesterday": (5, 1),
    "score 0": (0, 0),
    "dated the day after tomorrow": (4, -2),
}
QUESTIONS = ["Please send a photo ID.", "Who referred you?", "Which city do you live in?", "  "]
REJECT_REASONS = ["Referee could not vouch.", "Spam.", "Duplicate of another application.", " "]
REOPEN_REASONS = ["The referee called back.", "Decided too fast.", "Appeal accepted.", ""]
ANSWERS = ["Here is my ID.", "Sam referred me.", "Lisbon.", " "]
# Few names on purpose: two applications asking for the same one.
USERNAMES = ["alex", "sam", ""]
SERVER = "localhost"


@dataclass
class World:
    """What the test function's fixtures give every example."""

    homeserver: FakeSynapse
    staff: dict
    evidence_root: Path


@dataclass
class Applicant:
    pk: int
    reference: str
    full_name: str
    email: str
    matrix_username: str
    status_stem: str
    source: str
    erased: bool = False
    # Every Matrix username the person asked for or was given, noted when they erased.
    usernames_at_erasure: set[str] = field(default_factory=set)
    # Every evidence file ever stored for them.
    files: set[str] = field(default_factory=set)
    # The admin page as it was before the last staff step, to act on later (stale by then).
    page: Application | None = None


@dataclass
class Rows:
    """What the invariants read, once per step."""

    applications: list[Application]
    invitations: list[Invitation]
    mails: list[OutboundEmail]
    events: list[AuditEvent]

    def events_about(self, pk: int) -> list[AuditEvent]:
        return [e for e in self.events if (e.target_type, e.target_id) == ("application", str(pk))]


@dataclass
class Snapshot:
    applications: dict
    invitations: list
    audit: list
    outbox: list
    evidence: list
    notes: list
    replies: list
    server_tokens: dict
    server_users: dict

    def differences(self, other: Snapshot) -> list[str]:
        return [name for name in self.__dataclass_fields__ if getattr(self, name) != getattr(other, name)]


class WorkflowMachine(RuleBasedStateMachine):
    world: World  # set by the test function below, from its fixtures

    def __init__(self) -> None:
        super().__init__()
        # Each example starts from the test's database and rolls back to it at the end.
        self.savepoint = transaction.savepoint()
        self.homeserver = self.world.homeserver
        self.homeserver.tokens.clear()
        self.homeserver.users.clear()
        self.homeserver.server.requests.clear()
        self.staff = self.world.staff
        self.clock = time_machine.travel(datetime.now(UTC), tick=True)
        self.coordinates = self.clock.start()
        self.applicants: list[Applicant] = []
        self.homeserver_broken = False
        self.deleted_on_server: set[str] = set()
        self.other_names = 0
        self.sometimes: Counter = Counter()
        # server_id -> the localpart the person registered with that token
        self.registered_as: dict[str, str] = {}
        self.policy: override_settings | None = None
        self._open_statuses: set[str] | None = None
        self._link_holders: list[int] | None = None
        self._live: bool | None = None
        self._cached_rows: Rows | None = None
        self._buttons: dict[str, list[tuple[int, str]]] | None = None
        # Taken after every step and change; whatever changes the world without one forgets it.
        self._last_snapshot: Snapshot | None = None

    def teardown(self) -> None:
        self.clock.stop()
        if self.policy is not None:
            self.policy.disable()
        transaction.savepoint_rollback(self.savepoint)

    # Setting up ------------------------------------------------------------------

    # One initialize rule: Hypothesis runs several in any order.
    @initialize(
        send_token_to_applicant=st.booleans(),
        erasure_blocked=st.booleans(),
        people=st.lists(
            st.tuples(st.sampled_from(["public", "staff"]), st.sampled_from(USERNAMES), st.booleans()),
            min_size=2,
            max_size=3,
        ),
        data=st.data(),
    )
    def applications_arrive(self, send_token_to_applicant, erasure_blocked, people, data):
        # Not the `settings` fixture: each of its assignments wraps the settings once more,
        # and a few thousand examples' worth overflow the stack.
        self.policy = override_settings(
            MATRIX_SEND_TOKEN_TO_APPLICANT=send_token_to_applicant,
            ERASURE_BLOCKED_DURING_REVIEW=erasure_blocked,
        )
        self.policy.enable()
        for source, username, with_file in people:
            self._apply(source, username, with_file)
        # Walk some applications part of the happy path, so a short run reaches invitations and joins.
        for index, applicant in enumerate(self.applicants):
            # Weighted to the far end: two applications approved or invited together is where
            # usernames collide.
            steps = data.draw(st.sampled_from([0, 1, 2, 3, 4, 4, 5, 6]), label=f"head start of {index}")
            if steps >= 1 and applicant.source == "public":
                self._applicant_step("confirm_email", index)
            if steps < 2:
                continue
            claimer = data.draw(
                st.sampled_from(["agent", "second_agent", "server_admin", "superadmin"]), label="claimer"
            )
            self._staff_step("claim", index, claimer)
            if steps >= 3:
                self._staff_step("record_verification", index, claimer)
            if steps >= 4:
                deciders = [name for name in ("server_admin", "second_server_admin") if name != claimer]
                self._staff_step("approve", index, data.draw(st.sampled_from(deciders), label="decider"))
            if steps >= 5:
                issuers = [name for name in ("inviting_admin", "superadmin") if name != claimer]
                issuer = data.draw(st.sampled_from(issuers), label="issuer")
                username = applicant.matrix_username or data.draw(
                    st.sampled_from(USERNAMES[:2]), label="username"
                )
                self._staff_step("issue_invitation", index, issuer, matrix_username=username)
            if steps >= 6 and (invitation := self._live_invitation(applicant)) is not None:
                self._register(invitation, as_told=True)

    @precondition(lambda self: len(self.applicants) < len(APPLICANTS))
    @rule(
        source=st.sampled_from(["public", "staff"]),
        username=st.sampled_from(USERNAMES),
        with_file=st.booleans(),
    )
    def another_person_applies(self, source, username, with_file):
        """Someone new, so a run goes on after the first applications are closed."""
        self._apply(source, username, with_file)

    def _apply(self, source: str, username: str, with_file: bool) -> None:
        full_name, email = APPLICANTS[len(self.applicants)]
        application = Application(
            full_name=full_name,
            email=email,
            matrix_username=username,
            referral="Sam from the Lisbon meetup",
            statement="I organise the local chapter.",
        )
        uploads = [validate_upload(upload("letter.txt", TEXT_BYTES))] if with_file else []
        if source == "public":
            workflow.submit_application(application, uploads)
        else:
            workflow.submit_staff_application(application, uploads, self.staff["agent"])
        assert application.status == (Status.UNCONFIRMED if source == "public" else Status.SUBMITTED)
        # "received (with the status link)", for those who applied themselves; "entered" (with
        # only the confirmation link) for those whose address staff typed.
        [told] = OutboundEmail.objects.filter(to=email)
        if source == "public":
            assert told.template == "application-received"
            assert links.status_link_stem(application) in told.body_text
        else:
            assert told.template == "application-entered"
            assert "/confirm/" in told.body_text
        self.applicants.append(
            Applicant(
                pk=application.pk,
                reference=application.reference,
                full_name=full_name,
                email=email,
                matrix_username=username,
                status_stem=links.status_link_stem(application),
                source=source,
                files=set(application.evidence.values_list("file", flat=True)),
            )
        )
        self._forget()
        self._last_snapshot = None

    # Choosing who acts on what -----------------------------------------------------

    def _pks(self) -> list[int]:
        return [applicant.pk for applicant in self.applicants]

    def _indices(self) -> st.SearchStrategy[int]:
        return st.sampled_from(range(len(self.applicants)))

    def _fresh(self, index: int) -> Application:
        return Application.objects.get(pk=self.applicants[index].pk)

    def _any_in(self, statuses) -> bool:
        """Whether an application that was not erased is in one of `statuses` (for preconditions)."""
        if self._open_statuses is None:
            # Read once per step: only steps change the database, and each forgets this.
            self._open_statuses = set(
                Application.objects.filter(pk__in=self._pks(), erased_at__isnull=True).values_list(
                    "status", flat=True
                )
            )
        return not self._open_statuses.isdisjoint(statuses)

    def _any_live(self) -> bool:
        if self._live is None:
            self._live = Invitation.objects.live().exists()
        return self._live

    def _forget(self) -> None:
        self._open_statuses = self._live = self._cached_rows = self._buttons = self._link_holders = None

    def _holding_a_confirmation_link(self) -> list[int]:
        """Applicants mailed a confirmation link who have not confirmed their address yet."""
        if self._link_holders is None:
            self._link_holders = [
                index
                for index, applicant in enumerate(self.applicants)
                if not applicant.erased
                and self._fresh(index).email_confirmed_at is None
                and OutboundEmail.objects.filter(to=applicant.email, body_text__contains="/confirm/").exists()
            ]
        return self._link_holders

    def _shown(self, name: str) -> list[tuple[int, str]]:
        """(application, person) pairs for whom the admin would show the button `name` now."""
        if self._buttons is None:
            rows = [self._fresh(index) for index in range(len(self.applicants))]
            self._buttons = {
                button: [
                    (index, who)
                    for index, row in enumerate(rows)
                    for who in STAFF
                    if workflow.guard_reason(button, row, self.staff[who]) is None
                ]
                for button in SOURCES
            }
        return self._buttons[name]

    def _pick(self, data, name: str) -> tuple[int, str]:
        """Someone who sees the button, when anyone does; otherwise anyone (to be refused)."""
        shown = self._shown(name)
        anyone = st.tuples(self._indices(), st.sampled_from(STAFF))
        return data.draw(st.sampled_from(shown) if shown else anyone, label=f"{name}: application, by")

    def _pick_application(self, data, wanted: set[str]) -> int:
        likely = [
            index
            for index, applicant in enumerate(self.applicants)
            if not applicant.erased and self._fresh(index).status in wanted
        ]
        return data.draw(st.sampled_from(likely) if likely else self._indices(), label="application")

    # Rules that are always possible and mostly refused get copied along a run by
    # Hypothesis's mutator until they crowd out the rest: `sometimes` caps them per run.

    # Staff rules --------------------------------------------------------------------
    # Each runs while someone sees its button, and is taken by one of them (from a page
    # that may be stale); `anyone_tries_any_staff_action` and the verifier cover the rest.

    @precondition(lambda self: bool(self._shown("claim")))
    @rule(data=st.data(), stale=st.booleans())
    def claim(self, data, stale):
        index, who = self._pick(data, "claim")
        self._staff_step("claim", index, who, stale=stale)

    @precondition(lambda self: bool(self._shown("release")))
    @rule(data=st.data(), stale=st.booleans())
    def release(self, data, stale):
        index, who = self._pick(data, "release")
        self._staff_step("release", index, who, stale=stale)

    @precondition(lambda self: bool(self._shown("record_verification")))
    @rule(data=st.data(), stale=st.booleans(), entry=st.sampled_from(list(VERIFICATIONS)))
    def record_verification(self, data, stale, entry):
        index, who = self._pick(data, "record_verification")
        self._staff_step("record_verification", index, who, stale=stale, entry=entry)

    @precondition(lambda self: bool(self._shown("request_information")))
    @rule(data=st.data(), stale=st.booleans(), question=st.sampled_from(QUESTIONS))
    def request_information(self, data, stale, question):
        index, who = self._pick(data, "request_information")
        self._staff_step("request_information", index, who, stale=stale, question=question)

    @precondition(lambda self: bool(self._shown("approve")))
    @rule(data=st.data(), stale=st.booleans())
    def approve(self, data, stale):
        index, who = self._pick(data, "approve")
        self._staff_step("approve", index, who, stale=stale)

    @precondition(lambda self: bool(self._shown("reject")))
    @rule(data=st.data(), stale=st.booleans(), reason=st.sampled_from(REJECT_REASONS))
    def reject(self, data, stale, reason):
        index, who = self._pick(data, "reject")
        self._staff_step("reject", index, who, stale=stale, reason=reason)

    @precondition(lambda self: bool(self._shown("reopen")))
    @rule(data=st.data(), stale=st.booleans(), reason=st.sampled_from(REOPEN_REASONS))
    def reopen(self, data, stale, reason):
        index, who = self._pick(data, "reopen")
        self._staff_step("reopen", index, who, stale=stale, reason=reason)

    @precondition(lambda self: bool(self._shown("issue_invitation")))
    @rule(data=st.data(), stale=st.booleans(), username=st.sampled_from([None, "alex", "sam", "Not Valid"]))
    def issue_invitation(self, data, stale, username):
        index, who = self._pick(data, "issue_invitation")
        self._staff_step("issue_invitation", index, who, stale=stale, matrix_username=username)

    @precondition(lambda self: bool(self._shown("reissue_invitation")))
    @rule(data=st.data(), stale=st.booleans(), username=st.sampled_from([None, "alex", "sam"]))
    def reissue_invitation(self, data, stale, username):
        index, who = self._pick(data, "reissue_invitation")
        self._staff_step("reissue_invitation", index, who, stale=stale, matrix_username=username)

    @precondition(lambda self: bool(self._shown("revoke_invitation")))
    @rule(data=st.data(), stale=st.booleans())
    def revoke_invitation(self, data, stale):
        index, who = self._pick(data, "revoke_invitation")
        self._staff_step("revoke_invitation", index, who, stale=stale)

    @precondition(lambda self: self.sometimes["anyone_tries_any_staff_action"] < 8)
    @rule(
        data=st.data(),
        name=st.sampled_from([*SOURCES, "add_note"]),
        who=st.sampled_from(STAFF),
        stale=st.booleans(),
    )
    def anyone_tries_any_staff_action(self, data, name, who, stale):
        self.sometimes["anyone_tries_any_staff_action"] += 1
        self._staff_step(name, data.draw(self._indices(), label="application"), who, stale=stale)

    @precondition(lambda self: self.sometimes["the_verifier_tries_to_decide"] < 4)
    @precondition(
        lambda self: Application.objects.filter(
            pk__in=self._pks(), verification_recorded_by__isnull=False
        ).exists()
    )
    @rule(
        data=st.data(), name=st.sampled_from(["approve", "reject", "issue_invitation", "reissue_invitation"])
    )
    def the_verifier_tries_to_decide(self, data, name):
        """Four eyes: whoever recorded the verification can neither decide it nor issue its invitation."""
        self.sometimes["the_verifier_tries_to_decide"] += 1
        verified = [i for i in range(len(self.applicants)) if self._fresh(i).verification_recorded_by_id]
        index = data.draw(st.sampled_from(verified), label="application")
        verifier_pk = self._fresh(index).verification_recorded_by_id
        who = next(name for name, user in self.staff.items() if user.pk == verifier_pk)
        self._staff_step(name, index, who, expect="refuse")

    # Applicant rules ----------------------------------------------------------------

    # The "received" mail, or any mail of a staff-entered application until then.
    @precondition(lambda self: self._holding_a_confirmation_link())
    @rule(data=st.data())
    def applicant_confirms_their_address(self, data):
        index = data.draw(st.sampled_from(self._holding_a_confirmation_link()), label="application")
        self._applicant_step("confirm_email", index)

    @precondition(lambda self: self._any_in({Status.INFO_REQUESTED}))
    @rule(data=st.data(), with_file=st.booleans(), message=st.sampled_from(ANSWERS))
    def applicant_answers(self, data, with_file, message):
        index = self._pick_application(data, {Status.INFO_REQUESTED})
        self._applicant_step("add_information", index, with_file=with_file, message=message)

    # One rule for both, as they end an application's story; in any state, invited too.
    @precondition(lambda self: self.sometimes["applicant_withdraws_or_erases"] < 4)
    @precondition(lambda self: self._any_in(Status.values))
    @rule(data=st.data(), name=st.sampled_from(["withdraw", "erase_application"]))
    def applicant_withdraws_or_erases(self, data, name):
        self.sometimes["applicant_withdraws_or_erases"] += 1
        self._applicant_step(name, self._pick_application(data, set(Status.values)))

    @precondition(lambda self: self.sometimes["applicant_follows_an_old_link"] < 3)
    @rule(data=st.data(), name=st.sampled_from(["add_information", "confirm_email"]))
    def applicant_follows_an_old_link(self, data, name):
        """The status page or confirmation mail of earlier days: nothing to answer, or confirmed already
        (else it confirms the address now)."""
        self.sometimes["applicant_follows_an_old_link"] += 1
        index = data.draw(self._indices(), label="application")
        self._applicant_step(name, index, with_file=False, message="Here is my ID.")

    # The homeserver and the clock -----------------------------------------------------

    # With nothing live it is a no-op (checked in the_homeserver_rejects_our_admin_token_once).
    @precondition(lambda self: self._any_live())
    @rule(dry_run=st.booleans())
    def sync_invitations(self, dry_run):
        self._sync(dry_run)

    @precondition(lambda self: self.sometimes["something_happens_on_the_homeserver"] < 6)
    @rule(
        data=st.data(),
        happening=st.sampled_from(
            [
                "the person registers as told",
                "the person registers under another name",
                "someone else takes a wanted name",
                "a homeserver admin deletes a live token",
            ]
        ),
        then_the_timer_syncs=st.booleans(),
    )
    def something_happens_on_the_homeserver(self, data, happening, then_the_timer_syncs):
        """What people do in their Matrix clients and on the homeserver, outside this app."""
        self.sometimes["something_happens_on_the_homeserver"] += 1
        before = self._before()
        if happening == "someone else takes a wanted name":
            localpart = data.draw(st.sampled_from(USERNAMES[:2]), label="localpart")
            self.homeserver.users.setdefault(f"@{localpart}:{SERVER}", int(datetime.now(UTC).timestamp()))
        elif self._any_live():
            holders = [i for i, a in enumerate(self.applicants) if self._live_invitation(a) is not None]
            index = data.draw(st.sampled_from(holders), label="application")
            invitation = self._live_invitation(self.applicants[index])
            if happening == "a homeserver admin deletes a live token":
                if self.homeserver.tokens.pop(invitation.server_id, None) is not None:
                    self.deleted_on_server.add(invitation.server_id)
            else:
                self._register(invitation, as_told=happening == "the person registers as told")
        self._assert_database_unchanged(before, happening)
        if then_the_timer_syncs:
            self._sync(dry_run=False)

    def _register(self, invitation: Invitation, as_told: bool) -> None:
        remote = self.homeserver.tokens.get(invitation.server_id)
        now_ms = datetime.now(UTC).timestamp() * 1000
        if remote is None or remote["completed"] >= remote["uses_allowed"] or remote["expiry_time"] <= now_ms:
            return  # Synapse refuses the token.
        localpart = invitation.matrix_username
        if not as_told or f"@{localpart}:{SERVER}" in self.homeserver.users:
            self.other_names += 1
            localpart = f"someone.else{self.other_names}"
        self.homeserver.register(invitation.server_id, localpart)
        self.registered_as[invitation.server_id] = localpart
        self._last_snapshot = None

    @precondition(lambda self: self.sometimes["the_homeserver_rejects_our_admin_token_once"] < 3)
    @rule(data=st.data(), name=st.sampled_from(sorted(MATRIX_TRANSITIONS | {"sync_invitations"})))
    def the_homeserver_rejects_our_admin_token_once(self, data, name):
        self.sometimes["the_homeserver_rejects_our_admin_token_once"] += 1
        if name != "sync_invitations":
            index, who = self._pick(data, name)
        self.homeserver_broken = True
        try:
            with override_settings(MATRIX_ADMIN_TOKEN="syt_wrong_admin_token"):
                if name == "sync_invitations":
                    self._sync(dry_run=False)
                else:
                    self._staff_step(name, index, who)
        finally:
            self.homeserver_broken = False

    # The sync also runs from a timer (systemd), so it often follows what happens on the
    # homeserver or the clock: a rule of its own alone would come too seldom.
    @precondition(lambda self: self.sometimes["time_passes"] < 6)
    @rule(
        data=st.data(),
        wait=st.sampled_from(["an hour", "a month", "to 4 days before an expiry", "past an expiry"]),
        then_the_timer_syncs=st.booleans(),
    )
    def time_passes(self, data, wait, then_the_timer_syncs):
        """Straight to the days that matter, when a token is live: the reminder window, or past the expiry."""
        self.sometimes["time_passes"] += 1
        moment = timezone.now() + (timedelta(hours=1) if wait == "an hour" else timedelta(days=31))
        if wait.endswith("expiry") and self._any_live():
            holders = [i for i, a in enumerate(self.applicants) if self._live_invitation(a) is not None]
            index = data.draw(st.sampled_from(holders), label="application")
            expires_at = self._live_invitation(self.applicants[index]).expires_at
            moment = expires_at + (timedelta(days=-4) if wait.startswith("to 4 days") else timedelta(hours=1))
        if moment > timezone.now():  # the clock only goes forward
            before = self._before()
            self.coordinates.move_to(moment)
            self._forget()  # a re-issue button shows once the token has expired
            self._assert_database_unchanged(before, "time passing")
        if then_the_timer_syncs:
            self._sync(dry_run=False)

    @staticmethod
    def _live_invitation(applicant: Applicant) -> Invitation | None:
        return Invitation.objects.live().filter(application_id=applicant.pk).first()

    # Taking a step ---------------------------------------------------------------------

    def _staff_step(self, name: str, index: int, who: str, *, stale: bool = False, expect=None, **inputs):
        user = self.staff[who]
        fresh = self._fresh(index)
        # What a view passes: the row as it is now, or as a page loaded before the last
        # staff step showed it (another tab, a colleague's screen).
        seen = self.applicants[index].page
        page = copy.deepcopy(seen) if stale and seen is not None else self._fresh(index)
        self.applicants[index].page = copy.deepcopy(fresh)
        call, invalid_input = self._staff_call(name, page, user, inputs)
        if name == "add_note":
            if not user.has_perm("vetting.add_staffnote"):
                guard = "no permission"
            else:
                # Nothing more is written about someone who erased their application.
                guard = "erased" if fresh.erased_at is not None else None
        else:
            guard = workflow.guard_reason(name, fresh, user)
        # Release ends the claim the page showed, never one made since (released and claimed again);
        # a decision is taken on the verification the page showed, never on one recorded since.
        decision = name in ("approve", "reject") or (
            name == "request_information" and fresh.status == Status.RECOMMENDED
        )
        outdated_page = (name == "release" and page.claimed_by_id != fresh.claimed_by_id) or (
            decision and page.verification_recorded_at != fresh.verification_recorded_at
        )
        if expect is None:
            if guard is not None or invalid_input or outdated_page:
                expect = "refuse"
            elif name in MATRIX_TRANSITIONS:
                # The homeserver may still say no: the account exists, the token was used, 401.
                expect = "either"
            else:
                expect = "accept"
        self._step(
            name,
            index,
            call,
            actor=user,
            expect=expect,
            page_status=page.status,
            before=fresh,
            outdated_page=outdated_page,
        )

    def _staff_call(self, name: str, page: Application, user, inputs: dict):
        """The workflow call for `name`, and whether its inputs are ones the admin's form refuses."""
        if name == "record_verification":
            score, days_ago = VERIFICATIONS[inputs.get("entry", "score 4, today")]
            values = {
                "identity_verified": True,
                "method": Application.VerificationMethod.VIDEO,
                "verified_on": timezone.localdate() - timedelta(days=days_ago),
                "location": "Jitsi",
                "score": score,
                "recommendation": Application.Recommendation.APPROVE,
                "notes": "Matched the passport photo on video.",
            }
            invalid = not 1 <= score <= 5 or days_ago < 0
            return (lambda: workflow.record_verification(page, user, **values)), invalid
        if name == "request_information":
            question = inputs.get("question", QUESTIONS[0])
            return (lambda: workflow.request_information(page, user, question)), not question.strip()
        if name == "reject":
            reason = inputs.get("reason", REJECT_REASONS[0])
            message = "We could not confirm your referral."
            return (lambda: workflow.reject(page, user, reason, message)), not reason.strip()
        if name == "reopen":
            reason = inputs.get("reason", REOPEN_REASONS[0])
            return (lambda: workflow.reopen(page, user, reason)), not reason.strip()
        if name in ("issue_invitation", "reissue_invitation"):
            username = inputs.get("matrix_username")
            issue = getattr(workflow, name)
            return (lambda: issue(page, user, username)), username == "Not Valid"
        if name == "revoke_invitation":
            return (lambda: workflow.revoke_invitation(page, user, "Sent to the wrong person")), False
        if name == "add_note":
            return (lambda: workflow.add_note(page, user, "Met at the Lisbon meetup.")), False
        transition = getattr(workflow, name)  # claim, release, approve
        return (lambda: transition(page, user)), False

    def _applicant_step(self, name: str, index: int, with_file: bool = False, message: str = ""):
        fresh = self._fresh(index)
        if name == "confirm_email":
            expect = "accept" if fresh.email_confirmed_at is None and fresh.erased_at is None else "no-op"
            call = lambda: workflow.confirm_email(fresh)  # noqa: E731
        elif name == "add_information":
            uploads = [validate_upload(upload("answer.txt", TEXT_BYTES))] if with_file else []
            answered = bool(uploads) or bool(message.strip())
            expect = "accept" if fresh.status == Status.INFO_REQUESTED and answered else "refuse"
            call = lambda: workflow.add_information(fresh, uploads, message)  # noqa: E731
        elif name == "withdraw":
            expect = "accept" if workflow.withdrawal_refusal(fresh) is None else "refuse"
            if expect == "accept" and fresh.status == Status.INVITED:
                # The homeserver decides too: a used token, or a homeserver that fails, refuses it.
                expect = "either"
            call = lambda: workflow.withdraw(fresh)  # noqa: E731
        else:
            expect = "accept" if workflow.erasure_refusal(fresh) is None else "refuse"
            call = lambda: workflow.erase_application(fresh)  # noqa: E731
        self._step(name, index, call, actor=None, expect=expect, page_status=fresh.status, before=fresh)

    def _step(self, name, index, call, *, actor, expect, page_status, before, outdated_page=False):
        try:
            self._check_step(
                name, self.applicants[index], call, actor, expect, page_status, before, outdated_page
            )
        finally:
            self._forget()

    def _check_step(
        self, name, applicant: Applicant, call, actor, expect, page_status, before_row, outdated_page
    ):
        before = self._before()
        usernames = {
            applicant.matrix_username,
            *before_row.invitations.values_list("matrix_username", flat=True),
        }
        requests_before = len(self.homeserver.server.requests)
        try:
            result = call()
        except workflow.WorkflowError as refusal:
            assert expect in ("refuse", "either"), f"{name} by {actor} was refused though allowed: {refusal}"
            if isinstance(refusal, workflow.AlreadyDecided):
                assert page_status != before_row.status or outdated_page, (
                    "a lost race was reported where there was none"
                )
            if expect == "refuse":
                # "A refusal costs no homeserver call and is not blamed on the homeserver settings."
                assert len(self.homeserver.server.requests) == requests_before, (
                    f"refused {name} asked Synapse"
                )
            self._check_refused(name, applicant, before, actor, refusal)
            return
        if name == "confirm_email" and result is False:
            assert expect == "no-op", "confirming an unconfirmed application did nothing"
            self._assert_database_unchanged(before, "a second confirmation")
            return
        assert expect in ("accept", "either"), f"{name} by {actor} was accepted though it should be refused"
        self._check_accepted(name, applicant, before, actor)
        if name == "erase_application":
            applicant.erased = True
            applicant.usernames_at_erasure = {username for username in usernames if username}

    def _sync(self, dry_run: bool):
        try:
            self._check_sync(dry_run)
        finally:
            self._forget()

    def _check_sync(self, dry_run: bool):
        before = self._before()
        live_before = Invitation.objects.live().count()
        requests_before = len(self.homeserver.server.requests)
        try:
            report = workflow.sync_invitations(dry_run=dry_run)
        except matrix.MatrixError:
            assert self.homeserver_broken and live_before, "sync failed with a working homeserver"
            self._assert_database_unchanged(before, "a failed sync")
            return
        assert report.live == live_before
        if not live_before:
            # "Nothing is asked of the homeserver when no invitation is live."
            assert len(self.homeserver.server.requests) == requests_before
        if dry_run:
            # "A dry run makes the list call and counts what would change, writing and sending nothing."
            self._assert_database_unchanged(before, "a dry-run sync")
            return
        after = self._snapshot()
        self._check_audit_only_appended(before, after, erased_pk=None)
        new_events = self._new_events(before)
        moved = 0
        for pk, row in after.applications.items():
            old = before.applications[pk]
            if row == old:
                continue
            moved += 1
            move = (old["status"], row["status"])
            assert move in ARROWS["sync_invitations"], f"sync moved an application {move[0]} → {move[1]}"
            actions = {e.action for e in new_events if e.target_id == str(pk)}
            assert actions & SYNC_ACTIONS[row["status"]], f"sync moved an application {move} unaudited"
        assert moved == report.completed + report.expired + report.revoked
        was_pending = [row["id"] for row in before.invitations if row["state"] == Invitation.State.PENDING]
        for invitation in Invitation.objects.filter(pk__in=was_pending, state=Invitation.State.COMPLETED):
            # The flag staff rely on: no account with the assigned name is a mismatch, and the
            # person who registered as told is no false alarm.
            if f"@{invitation.matrix_username}:{SERVER}" not in self.homeserver.users:
                assert invitation.redemption_check == Invitation.Check.MISMATCH, "a missing account passed"
            elif self.registered_as.get(invitation.server_id) == invitation.matrix_username:
                assert invitation.redemption_check == Invitation.Check.PASSED, "a true redemption was flagged"
        assert all(e.actor_kind == AuditEvent.ActorKind.SYSTEM for e in new_events)
        # "unused ones near expiry get one reminder", to the admin who issued them.
        reminders = self._new_mails(before)
        assert [mail.template for mail in reminders] == ["invitation-expiring"] * report.reminders
        staff_addresses = {user.email for user in self.staff.values()}
        assert all(mail.to in staff_addresses for mail in reminders), "a reminder went outside staff"

    # Checking a step ----------------------------------------------------------------------

    def _before(self) -> Snapshot:
        """The state before a step: the snapshot the last step ended with, when nothing changed since."""
        return self._last_snapshot or self._snapshot()

    def _snapshot(self) -> Snapshot:
        self._last_snapshot = Snapshot(
            applications={row["id"]: row for row in Application.objects.order_by("id").values()},
            invitations=list(Invitation.objects.order_by("id").values()),
            audit=list(
                AuditEvent.objects.order_by("id").values_list(
                    "id", "hash", "action", "target_id", "details", "ip", "redacted_digest"
                )
            ),
            outbox=list(OutboundEmail.objects.order_by("id").values_list("id", "to", "template", "status")),
            evidence=list(Evidence.objects.order_by("id").values_list("id", "file")),
            notes=list(StaffNote.objects.order_by("id").values_list("id", flat=True)),
            replies=list(InformationReply.objects.order_by("id").values_list("id", flat=True)),
            server_tokens=copy.deepcopy(self.homeserver.tokens),
            server_users=dict(self.homeserver.users),
        )
        return self._last_snapshot

    def _assert_database_unchanged(self, before: Snapshot, what: str) -> None:
        changed = [
            name
            for name in before.differences(self._snapshot())
            if name not in ("server_tokens", "server_users")
        ]
        assert not changed, f"{what} changed {changed}"

    @staticmethod
    def _new_events(before: Snapshot) -> list[AuditEvent]:
        return list(AuditEvent.objects.order_by("id").exclude(pk__in=[row[0] for row in before.audit]))

    @staticmethod
    def _new_mails(before: Snapshot) -> list[OutboundEmail]:
        return list(OutboundEmail.objects.order_by("id").exclude(pk__in=[row[0] for row in before.outbox]))

    def _check_refused(self, name: str, applicant: Applicant, before: Snapshot, actor, refusal) -> None:
        """A refusal changes nothing, here or on the homeserver; a failed homeserver call is audited."""
        after = self._snapshot()
        changed = before.differences(after)
        if self.homeserver_broken and "rejected our admin token" in str(refusal):
            assert changed == ["audit"], f"a failed homeserver call changed {changed}"
            [failure] = self._new_events(before)
            assert after.audit[: len(before.audit)] == before.audit
            assert failure.action in MATRIX_FAILURE_ACTIONS, f"refused {name} wrote {failure.action}"
            assert (failure.target_id, failure.actor_id) == (str(applicant.pk), actor.pk)
            return
        assert not changed, f"refused {name} changed {changed}"

    def _check_accepted(self, name: str, applicant: Applicant, before: Snapshot, actor) -> None:
        after = self._snapshot()
        old = before.applications[applicant.pk]
        new = after.applications[applicant.pk]
        move = (old["status"], new["status"])
        if name == "add_note":
            assert move[0] == move[1], f"a note moved the application {move[0]} → {move[1]}"
        else:
            assert move in ARROWS[name], f"{name} moved the application {move[0]} → {move[1]}"
        for pk, row in after.applications.items():
            assert pk == applicant.pk or row == before.applications[pk], f"{name} changed another application"

        # Every accepted step writes its audit event, naming who took it.
        self._check_audit_only_appended(
            before, after, erased_pk=applicant.pk if name == "erase_application" else None
        )
        new_events = self._new_events(before)
        action = AUDIT_ACTION[name]
        if name == "confirm_email" and old["status"] != Status.UNCONFIRMED:
            action = "application.email_confirmed"  # not a change of status
        written = [e for e in new_events if (e.action, e.target_id) == (action, str(applicant.pk))]
        assert len(written) == 1, f"{name} wrote the audit events {[e.action for e in new_events]}"
        if actor is None:
            assert written[0].actor_kind == AuditEvent.ActorKind.APPLICANT
        else:
            assert (written[0].actor_kind, written[0].actor_id) == (AuditEvent.ActorKind.USER, actor.pk)

        # Four eyes, at the moment of the decision; sending a recommended application back is one.
        if name in ("approve", "reject", "issue_invitation", "reissue_invitation") or (
            name == "request_information" and old["status"] == Status.RECOMMENDED
        ):
            assert old["verification_recorded_by_id"] != actor.pk, f"the verifier could {name}"

        # The mails DESIGN.md lists, to whom it lists them, and nothing else; only erasure deletes mail.
        new_mails = self._new_mails(before)
        mails = Counter((mail.template, mail.to) for mail in new_mails)
        assert mails == self._expected_mails(name, old, new, actor), f"{name} queued {dict(mails)}"
        self._check_links(new_mails, after)
        if name != "erase_application":
            kept = {row[0] for row in after.outbox}
            assert all(row[0] in kept for row in before.outbox), f"{name} deleted mail"

        if name in ("issue_invitation", "reissue_invitation"):
            invitation = Invitation.objects.live().get(application_id=applicant.pk)
            assert (invitation.issued_by_id, invitation.uses_allowed) == (actor.pk, 1)
            valid_for = timedelta(days=django_settings.MATRIX_TOKEN_VALID_DAYS)
            assert abs(invitation.expires_at - invitation.issued_at - valid_for) < timedelta(seconds=5)
            assert self.homeserver.tokens[invitation.server_id]["uses_allowed"] == 1, "not single-use"
        if name == "reopen":
            # "back to recommended, or to the queue without a verification"
            expected = Status.RECOMMENDED if old["verification_recorded_at"] else Status.SUBMITTED
            assert (new["status"], new["decided_by_id"]) == (expected, None)
        if name == "erase_application":
            # "their evidence, answers, personal fields and staff notes go", the files too.
            assert not Evidence.objects.filter(application_id=applicant.pk).exists()
            assert not StaffNote.objects.filter(application_id=applicant.pk).exists()
            assert not InformationReply.objects.filter(application_id=applicant.pk).exists()
            for stored in applicant.files:
                assert not (self.world.evidence_root / stored).exists(), "an erased applicant's file is kept"
        else:
            applicant.files |= set(
                Evidence.objects.filter(application_id=applicant.pk).values_list("file", flat=True)
            )

    def _check_links(self, mails: list[OutboundEmail], after: Snapshot) -> None:
        """A status link opens an application's data and erasure: it is mailed only to a confirmed
        address, but for the "received" mail to the address its applicant just typed."""
        for mail in mails:
            text = f"{mail.subject}\n{mail.body_text}\n{mail.body_html}"
            for applicant in self.applicants:
                confirmed = after.applications[applicant.pk]["email_confirmed_at"] is not None
                if applicant.status_stem in text:
                    assert confirmed or mail.template == "application-received", (
                        f"a {mail.template} mail carries the status link to an unconfirmed address"
                    )
                    assert mail.to == applicant.email, f"a status link was mailed to {mail.to}"
                if mail.to == applicant.email and mail.template in LINKING_MAIL and not confirmed:
                    assert "/confirm/" in mail.body_text, f"a {mail.template} mail leads nowhere"

    def _expected_mails(self, name: str, old: dict, new: dict, actor) -> Counter:
        expected: Counter = Counter()
        if name == "confirm_email":
            if old["status"] != Status.UNCONFIRMED:
                return expected  # already in the queue: staff were not waiting for this
            expected.update(("staff-new-application", to) for to in django_settings.STAFF_NOTIFY_EMAILS)
        elif name in APPLICANT_MAIL and new["erased_at"] is None:
            expected[(APPLICANT_MAIL[name], new["email"])] += 1
        elif name in ("issue_invitation", "reissue_invitation"):
            expected[("invitation-issued", actor.email)] += 1
            if django_settings.MATRIX_SEND_TOKEN_TO_APPLICANT and new["email_confirmed_at"]:
                expected[("invitation-token", new["email"])] += 1
        if name == "withdraw" and old["status"] == Status.INVITED:
            # The admin holding the token is told not to send it.
            issuer = Invitation.objects.filter(application_id=old["id"]).latest("issued_at").issued_by
            expected[("invitation-withdrawn", issuer.email)] += 1
        return expected

    def _check_audit_only_appended(self, before: Snapshot, after: Snapshot, erased_pk: int | None) -> None:
        """Nobody changes or deletes an event; erasure only blanks the IP and details of its own."""
        assert len(after.audit) >= len(before.audit)
        for old, new in zip(before.audit, after.audit, strict=False):
            if old != new:
                assert erased_pk is not None and old[3] == str(erased_pk), f"audit event {old[0]} changed"
                assert new[:4] == old[:4] and (new[4], new[5]) == ({}, None) and new[6]

    # Invariants ----------------------------------------------------------------------------
    # They read the database once per step (`_rows`): only steps change it, and each forgets it.

    @invariant()
    def every_status_is_a_design_state(self):
        # Every change of status was checked against ARROWS by the step that made it.
        statuses = {application.status for application in self._rows().applications}
        assert statuses <= DESIGN_STATES, statuses - DESIGN_STATES

    @invariant()
    def each_status_has_the_record_it_implies(self):
        rows = self._rows()
        used = {i.application_id for i in rows.invitations if i.state == Invitation.State.COMPLETED}
        for application in rows.applications:
            status = application.status
            if status == Status.SUBMITTED:
                assert application.claimed_by_id is None, "an application in the queue is still claimed"
            if status == Status.IN_REVIEW:
                assert application.claimed_by_id is not None, "an application in review has no reviewer"
            if status in (Status.RECOMMENDED, Status.APPROVED, Status.INVITED, Status.JOINED):
                assert application.verification_recorded_by_id is not None, f"{status} unverified"
            if status in (Status.APPROVED, Status.INVITED, Status.JOINED, Status.REJECTED):
                assert application.decided_by_id is not None, f"{status} without a decision"
            if status == Status.JOINED:
                assert application.pk in used, "joined without a used invitation"
            if application.source == Application.Source.PUBLIC and status != Status.UNCONFIRMED:
                # Staff see a public application only once its address is confirmed.
                assert application.email_confirmed_at is not None or status == Status.WITHDRAWN

    @invariant()
    def nobody_decides_what_they_verified(self):
        """Four eyes, over the whole trail: no decision or invitation by the verifier of the day."""
        rows = self._rows()
        for application in rows.applications:
            assert application.decided_by_id is None or (
                application.decided_by_id != application.verification_recorded_by_id
            ), "the person who recorded the verification decided it"
            verifier = None
            for event in rows.events_about(application.pk):
                if event.action == "application.verification_recorded":
                    verifier = event.actor_id
                elif event.action in DECISIONS:
                    assert event.actor_id != verifier, f"{event.action} by the person who verified it"

    @invariant()
    def one_live_invitation_per_application_and_per_username(self):
        rows = self._rows()
        live = [invitation for invitation in rows.invitations if invitation.state == Invitation.State.PENDING]
        per_application = Counter(invitation.application_id for invitation in live)
        per_username = Counter(invitation.matrix_username.casefold() for invitation in live)
        assert max(per_application.values(), default=0) <= 1, per_application
        assert max(per_username.values(), default=0) <= 1, f"two live tokens promise one name: {per_username}"
        for application in rows.applications:
            live_ones = per_application[application.pk]
            assert (application.status == Status.INVITED) == (live_ones == 1), (
                f"an application {application.status} with {live_ones} live invitations"
            )

    @invariant()
    def the_homeserver_holds_no_token_we_do_not_follow(self):
        invitations = {invitation.server_id: invitation for invitation in self._rows().invitations}
        now_ms = datetime.now(UTC).timestamp() * 1000
        for server_id, remote in self.homeserver.tokens.items():
            assert server_id in invitations, "an orphan token is on the homeserver"
            state = invitations[server_id].state
            assert state != Invitation.State.REVOKED, "a revoked token is still on the homeserver"
            if remote["completed"] < remote["uses_allowed"] and remote["expiry_time"] > now_ms:
                assert state == Invitation.State.PENDING, f"a usable token belongs to an invitation {state}"
        for server_id, invitation in invitations.items():
            if invitation.state == Invitation.State.PENDING:
                assert server_id in self.homeserver.tokens or server_id in self.deleted_on_server

    @invariant()
    def reminders_come_once_and_only_near_expiry(self):
        rows = self._rows()
        for invitation in rows.invitations:
            if invitation.reminder_sent_at is not None:
                assert invitation.expires_at - invitation.reminder_sent_at <= workflow.REMINDER_BEFORE_EXPIRY
        reminded = Counter(
            event.details.get("invitation")
            for event in rows.events
            if event.action == "invitation.reminder_sent" and event.details  # erasure blanks them
        )
        assert max(reminded.values(), default=0) <= 1, f"an invitation was reminded of twice: {reminded}"

    @invariant()
    def no_mail_carries_evidence_statements_or_staff_words(self):
        """DESIGN.md: "No e-mail carries evidence or the applicant's statement"; notes stay with staff."""
        private = [
            "I organise the local chapter.",  # the statement
            "Sam from the Lisbon meetup",  # the referral
            TEXT_BYTES.decode().strip(),  # the evidence files
            "Met at the Lisbon meetup.",  # staff notes
            "Matched the passport photo on video.",  # verification notes
            *[reason.strip() for reason in REJECT_REASONS if reason.strip()],  # reasons kept for the record
        ]
        for mail in self._rows().mails:
            found = [words for words in private if words in mail.text]
            assert not found, f"a {mail.template} mail to {mail.to} carries {found}"

    @invariant()
    def registration_tokens_reach_only_the_issuer_or_a_confirmed_applicant(self):
        rows = self._rows()
        applications = {application.pk: application for application in rows.applications}
        trail = json.dumps([event.details for event in rows.events])
        for invitation in rows.invitations:
            assert invitation.token not in trail, "a registration token is in the audit trail"
            application = applications[invitation.application_id]
            for mail in rows.mails:
                if invitation.token not in mail.text:
                    continue
                to_applicant = (
                    django_settings.MATRIX_SEND_TOKEN_TO_APPLICANT
                    and application.email_confirmed_at is not None
                    and mail.to == application.email
                )
                assert mail.to == invitation.issued_by.email or to_applicant, (
                    f"a registration token was mailed to {mail.to} ({mail.template})"
                )

    @invariant()
    def erased_applications_are_forgotten_and_never_mailed(self):
        rows = self._rows()
        applications = {application.pk: application for application in rows.applications}
        for applicant in self.applicants:
            if not applicant.erased:
                continue
            application = applications[applicant.pk]
            assert application.erased_at is not None
            assert not [name for name in ERASED_FIELDS if getattr(application, name)], "personal data kept"
            assert not application.evidence.exists() and not application.information_replies.exists()
            # "mail not yet sent is never sent" (our worker never runs: nothing is being sent).
            traces = [applicant.reference, applicant.full_name, applicant.email, applicant.status_stem]
            for mail in rows.mails:
                found = [trace for trace in traces if trace in f"{mail.to}\n{mail.text}"]
                assert not found, f"a {mail.template} mail to {mail.to} names the erased applicant: {found}"
            personal = [applicant.full_name, applicant.email, *applicant.usernames_at_erasure]
            trail = json.dumps([event.details for event in rows.events_about(applicant.pk)])
            assert not [value for value in personal if value in trail], "the audit trail still names them"
            # "Kept: the reference, the status, the dates and an anonymised audit trail."
            for invitation in rows.invitations:
                if invitation.application_id != applicant.pk:
                    continue
                found = [
                    name
                    for name in applicant.usernames_at_erasure
                    if name == invitation.matrix_username or f"@{name}:" in invitation.redemption_note
                ]
                assert not found, f"an invitation of the erased application still names @{found[0]}:{SERVER}"

    @invariant()
    def the_audit_chain_verifies(self):
        assert audit.check_chain().broken is None

    def _rows(self) -> Rows:
        if self._cached_rows is None:
            mails = list(OutboundEmail.objects.order_by("pk"))
            for mail in mails:
                mail.text = f"{mail.subject}\n{mail.body_text}\n{mail.body_html}"
            self._cached_rows = Rows(
                applications=list(Application.objects.filter(pk__in=self._pks()).order_by("pk")),
                invitations=list(Invitation.objects.select_related("issued_by").order_by("pk")),
                mails=mails,
                events=list(AuditEvent.objects.order_by("pk")),
            )
        return self._cached_rows


@pytest.fixture
def shrinking_for_a_minute(monkeypatch):
    """A failure is shrunk for at most a minute, not Hypothesis's five: each example here costs a second."""
    monkeypatch.setattr(hypothesis_engine, "MAX_SHRINKING_SECONDS", 60)


@pytest.fixture
def homeserver(settings, monkeypatch):
    """tests/vetting/conftest.py's `fake_synapse` with its fast retries (that conftest is not ours).

    The read timeout stays the client's own: this fake never hangs, and a short one would
    let a busy machine turn a slow answer into a failure the machine never chose.
    """
    monkeypatch.setattr(matrix, "RETRY_DELAYS", (0.0, 0.0, 0.0))
    fake = FakeSynapse(server_name=SERVER)
    settings.MATRIX_BACKEND = "synapse"
    settings.MATRIX_HOMESERVER_URL = fake.url
    settings.MATRIX_ADMIN_TOKEN = fake.admin_token
    settings.MATRIX_SERVER_NAME = SERVER
    yield fake
    fake.close()


def test_random_workflows_keep_every_promise_to_applicants_and_auditors(
    shrinking_for_a_minute,
    homeserver,
    settings,
    agent,
    second_agent,
    server_admin,
    second_server_admin,
    inviting_admin,
    superadmin,
    outsider,
):
    WorkflowMachine.world = World(
        homeserver=homeserver,
        staff={
            "agent": agent,
            "second_agent": second_agent,
            "server_admin": server_admin,
            "second_server_admin": second_server_admin,
            "inviting_admin": inviting_admin,
            "superadmin": superadmin,
            "outsider": outsider,
        },
        evidence_root=Path(settings.EVIDENCE_ROOT),
    )
    run_state_machine_as_test(WorkflowMachine, settings=machine_settings)
