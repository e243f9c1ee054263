"""Hold a real response to the OpenAPI document: documented status, body schema, required headers."""

from __future__ import annotations

import jsonschema


def operation(doc: dict, method: str, path: str) -> tuple[str, dict]:
    """(template, operation) of the documented path that path matches."""
    parts = path.split("/")
    for template, item in doc["paths"].items():
        pattern = template.split("/")
        if len(pattern) == len(parts) and method.lower() in item and all(
                p == q or (p.startswith("{") and q) for p, q in zip(pattern, parts)):
            return template, item[method.lower()]
    raise AssertionError(f"{method} {path} is not in the OpenAPI document")


def conforms(doc: dict, method: str, path: str, response) -> None:
    """AssertionError unless the Flask test response is what the document promises for this call."""
    template, op = operation(doc, method, path.split("?")[0])
    status = str(response.status_code)
    documented = op["responses"].get(status) or op["responses"].get(f"{status[0]}XX") or op["responses"].get("default")
    assert documented is not None, f"{method} {template}: status {status} is not documented"
    for name, header in (documented.get("headers") or {}).items():
        if header.get("required"):
            assert name in response.headers, f"{method} {template} {status}: header {name} missing"
    content = documented.get("content")
    if not content:
        assert not response.get_data(), f"{method} {template} {status}: a body where none is documented"
        return
    mimetype = response.mimetype
    assert mimetype in content, f"{method} {template} {status}: {mimetype} is not documented ({list(content)})"
    if mimetype == "application/json":
        schema = {**content[mimetype]["schema"], "components": doc["components"]}
        jsonschema.Draft202012Validator(schema).validate(response.get_json())
