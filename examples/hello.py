"""A handler: prints a line (the run's stdout) and returns a greeting (its result)."""


def handler(event, context):
    name = event.get("name", "world")
    print("greeting", name)
    return {"greeting": f"Hello, {name}!"}
