"""The tag operations: AddTags, ListTags and DeleteTags, for models, endpoint configurations and
endpoints, named by their ARN (docs/sagemaker-api.md, '2. Names, limits and operations').

Tags live beside each resource in the store (CreateModel's, CreateEndpointConfig's and
CreateEndpoint's Tags are kept there too), at most 50 per resource, keys unique and case-sensitive.
AddTags adds or overwrites; DeleteTags removes the keys it names (a key the resource does not have
is no error); ListTags pages them in the order they were first added.

An endpoint's `splitserve:failover` tag is the one tag with an effect: AddTags and DeleteTags that
change whether it is `true` change the endpoint's live router at once (`Deployer.set_failover`),
without a redeployment, and the change is in the store before the call answers, so a restart keeps
it. Its value is checked as at CreateEndpoint (`true` or `false`, any case).

Choices where SageMaker's behaviour is not documented (the README and the reference say so too):
- an ARN of another account, region or partition, or of a resource that does not exist, is
  `Could not find <kind> "<arn>".` (ValidationException), like the Describe operations;
- an ARN of a kind splitserve does not serve (a training job, ...) is a ValidationException that
  says which kinds it serves;
- AddTags answers with the tags it was given; keys starting with `aws:` are refused by AddTags and
  DeleteTags (AWS reserves them).
"""

from __future__ import annotations

import base64
import binascii
import json
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace

from splitserve.config import AccountSettings
from splitserve.control.deployer import Deployer
from splitserve.control.documents import check_failover_tag, not_found, tag_pairs, text, texts
from splitserve.control.lifecycle import EndpointLifecycle
from splitserve.control.models import (
    RAMP_TAG,
    EndpointRecord,
    EndpointStatus,
    ResourceKind,
    Tags,
    failover_enabled,
)
from splitserve.control.ramp import RampSpec, check_ramp, ramp_spec
from splitserve.control.shapes import MAX_TAGS
from splitserve.control.state import ControlState
from splitserve.control.validation import validate_request
from splitserve.errors import SplitserveError, ValidationException

#: AWS reserves tag keys with this prefix; users can neither add nor delete them.
_RESERVED_PREFIX = "aws:"

_KINDS = {kind.arn_type: kind for kind in ResourceKind}


def resource_of(arn: str, account: AccountSettings) -> tuple[ResourceKind, str]:
    """The kind and name of the resource a (pattern-checked) ResourceArn names.

    Raises:
        ValidationException: the ARN names a kind of resource splitserve does not serve, or a
            resource of another partition, region or account (`Could not find ...`: none of those
            exists on this gateway).
    """
    parts = arn.split(":", 5)
    resource = parts[5] if len(parts) == 6 else ""
    type_name, _, name = resource.partition("/")
    kind = _KINDS.get(type_name)
    if kind is None:
        raise ValidationException(
            "splitserve keeps tags for models, endpoint configurations and endpoints only (ARNs "
            f"ending in model/<name>, endpoint-config/<name> or endpoint/<name>), not for '{arn}'."
        )
    if (
        parts[1] != "aws"
        or parts[3] != account.region
        or parts[4] != account.account_id
        or not name
        or "/" in name
    ):
        raise not_found(kind, arn)
    return kind, name


class TagOperations:
    """Serves AddTags, ListTags and DeleteTags.

    Args:
        state: the store, its lock and the account the ARNs name.
        deployer: told when an endpoint's failover setting changes.
        account: the account and region this gateway's ARNs carry.
        lifecycle: runs the ramp a new `splitserve:ramp` value asks for (None: the tag is
            kept and checked, but ramps nothing).
    """

    def __init__(
        self,
        state: ControlState,
        deployer: Deployer,
        account: AccountSettings,
        lifecycle: EndpointLifecycle | None = None,
    ) -> None:
        self._state = state
        self._deployer = deployer
        self._account = account
        self._lifecycle = lifecycle

    async def add_tags(self, body: Mapping[str, object]) -> dict[str, object]:
        """AddTags -> {Tags: the tags given}: add them, or overwrite the values of keys it has."""
        request = validate_request("AddTags", body)
        arn = text(request, "ResourceArn")
        kind, name = resource_of(arn, self._account)
        given = tag_pairs(request.get("Tags"))
        _refuse_reserved(key for key, _ in given)

        def added(tags: Tags) -> Tags:
            merged = tag_pairs(request.get("Tags"), existing=tags)
            if len(merged) > MAX_TAGS:
                raise ValidationException(
                    f'Tag limit exceeded: "{arn}" would have {len(merged)} tags; a resource can '
                    f"have at most {MAX_TAGS}."
                )
            if kind is ResourceKind.ENDPOINT:
                check_failover_tag(merged)
                ramp_spec(merged)
            return merged

        await self._change(kind, name, arn, added)
        return {"Tags": [{"Key": key, "Value": value} for key, value in given]}

    async def delete_tags(self, body: Mapping[str, object]) -> dict[str, object]:
        """DeleteTags -> {}: remove the keys named (keys the resource does not have are ignored)."""
        request = validate_request("DeleteTags", body)
        arn = text(request, "ResourceArn")
        kind, name = resource_of(arn, self._account)
        keys = frozenset(texts(request.get("TagKeys")))
        _refuse_reserved(keys)

        def deleted(tags: Tags) -> Tags:
            return tuple((key, value) for key, value in tags if key not in keys)

        await self._change(kind, name, arn, deleted)
        return {}

    async def list_tags(self, body: Mapping[str, object]) -> dict[str, object]:
        """ListTags -> {Tags, NextToken?}: the resource's tags, MaxResults (at least 50) a page."""
        request = validate_request("ListTags", body)
        arn = text(request, "ResourceArn")
        kind, name = resource_of(arn, self._account)
        tags = await self._state.run(self._state.store.get_tags, kind, name)
        if tags is None:
            raise not_found(kind, arn)
        token = request.get("NextToken")
        start = _decode_token(token) if isinstance(token, str) and token else 0
        limit = request.get("MaxResults")
        limit = limit if isinstance(limit, int) else MAX_TAGS
        page = tags[start : start + limit]
        response: dict[str, object] = {
            "Tags": [{"Key": key, "Value": value} for key, value in page]
        }
        if start + limit < len(tags):
            response["NextToken"] = _encode_token(start + limit)
        return response

    async def _change(
        self,
        kind: ResourceKind,
        name: str,
        arn: str,
        change: Callable[[Tags], Tags],
    ) -> None:
        """Apply `change` to the resource's stored tags; for an endpoint, under the state lock
        (whole-record writes of endpoints happen under it) and with its router told of a change
        of failover. A router that cannot take it leaves the old tags stored."""
        if kind is not ResourceKind.ENDPOINT:
            changed = await self._state.run(self._state.store.change_tags, kind, name, change)
            if changed is None:
                raise not_found(kind, arn)
            return
        async with self._state.lock:
            record = await self._state.run(self._state.store.get_endpoint, name)
            if record is None:
                raise not_found(kind, arn)
            ramp = self._new_ramp(record, change(record.tags))
            changed = await self._state.run(self._state.store.change_tags, kind, name, change)
            if changed is None:
                raise not_found(kind, arn)
            before, after = changed
            if ramp is not None and self._lifecycle is not None:
                await self._state.run(
                    self._state.store.put_endpoint,
                    replace(
                        record,
                        tags=after,
                        status=EndpointStatus.UPDATING,
                        last_modified_time=time.time(),
                        failure_reason=None,
                    ),
                )
                self._lifecycle.spawn(record.name, self._lifecycle.ramp(record.name, ramp))
            failover = failover_enabled(after)
            # A Deleting endpoint is going away: its router is not told (and must not be
            # remembered for a later endpoint of the same name).
            if failover == failover_enabled(before) or record.status is EndpointStatus.DELETING:
                return
            try:
                await self._deployer.set_failover(record.name, failover)
            except Exception as error:
                await self._state.run(
                    self._state.store.change_tags, kind, name, lambda _tags: before
                )
                reason = (
                    error.message
                    if isinstance(error, SplitserveError)
                    else "the router did not take it; see the gateway log"
                )
                raise ValidationException(
                    f"The failover setting could not be applied: {reason}"
                ) from error

    def _new_ramp(self, record: EndpointRecord, tags: Tags) -> RampSpec | None:
        """The ramp to start when `tags` give the endpoint a new `splitserve:ramp` value (a
        value it had already starts nothing; removing the tag stops nothing).

        Raises:
            ValidationException: the endpoint is not InService (`Cannot update in-progress
                endpoint`), or the tag names no production variant of it.
        """
        spec = ramp_spec(tags)
        if spec is None or self._lifecycle is None or _tag_value(tags) == _tag_value(record.tags):
            return None
        if record.status is not EndpointStatus.IN_SERVICE or self._lifecycle.busy(record.name):
            arn = self._state.arn(ResourceKind.ENDPOINT, record.name)
            raise ValidationException(f'Cannot update in-progress endpoint "{arn}".')
        check_ramp(spec, record.variants)
        return spec


def _tag_value(tags: Tags) -> str | None:
    return next((value for key, value in tags if key == RAMP_TAG), None)


def _refuse_reserved(keys: Iterable[str]) -> None:
    reserved = sorted(key for key in keys if key.startswith(_RESERVED_PREFIX))
    if reserved:
        raise ValidationException(
            f"Tag keys starting with '{_RESERVED_PREFIX}' are reserved for AWS and cannot be "
            f"added or deleted: '{reserved[0][:128]}'."
        )


def _encode_token(offset: int) -> str:
    """ListTags' NextToken: opaque to clients, the position of the next page's first tag."""
    return base64.urlsafe_b64encode(json.dumps({"Offset": offset}).encode()).decode()


def _decode_token(token: str) -> int:
    invalid = ValidationException("Invalid pagination token")
    try:
        payload = json.loads(base64.urlsafe_b64decode(token.encode("ascii")))
    except (ValueError, UnicodeError, binascii.Error, RecursionError):
        raise invalid from None
    offset = payload.get("Offset") if isinstance(payload, dict) else None
    if isinstance(offset, bool) or not isinstance(offset, int) or not 0 <= offset <= MAX_TAGS:
        raise invalid
    return offset
