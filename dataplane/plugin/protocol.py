"""What the driver and IPAM handlers share: their two kinds of failure and field access."""


class PluginError(Exception):
    """The request was understood but cannot be carried out (HTTP 200, `Err`/`Error`)."""


class BadRequest(PluginError):
    """The request itself is malformed: not JSON, not an object, a field missing or of the
    wrong type (HTTP 400, as libnetwork's remote-driver protocol asks)."""


def field(request, name, kind=str, required=True):
    """`request[name]`, checked to be a `kind` (a non-empty one when `required`).

    Absent or null optional fields come back as the empty value of `kind`.
    """
    value = request.get(name)
    if value is None or value == kind():
        if required:
            raise BadRequest(f"missing {name}")
        return kind()
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise BadRequest(f"{name} must be a JSON {_JSON_NAMES.get(kind, kind.__name__)}")
    return value


_JSON_NAMES = {str: "string", dict: "object", list: "array", bool: "boolean", int: "number"}
