"""The host commands that take the dogbreed images to SageMaker, or run them locally.

One module per command (data, push, tune, train, deploy, invoke, cleanup, demo, soak),
run as ``scripts/<command>.py`` or ``dogbreed <command>`` (cli.py); the parts they
share: settings.py (flags, environment, config file), state.py (what one step leaves
for the next), context.py (both, and the AWS session, built once per command) and
sagemaker_calls.py (every SageMaker SDK call).
"""
