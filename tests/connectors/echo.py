"""A test connector with settings and a secret, loadable as a plugin (``QUELL_PLUGINS``):
it says back what it was configured with, never the secret itself."""

from __future__ import annotations

from pydantic import BaseModel, Field

from quell.sdk import ActionContext, ActionInput, ActionOutput, Connector, RiskLevel, action

SECRET = "tok-5f3e9a1c-never-stored-in-clear"


class EchoConfig(BaseModel):
    base_url: str = Field(pattern=r"^https?://")
    region: str = "eu"


class EchoIn(ActionInput):
    word: str


class EchoOut(ActionOutput):
    word: str
    base_url: str
    region: str
    token_set: bool
    token_length: int


class Echo(Connector):
    """Says back its settings and whether it got its secret."""

    name = "echo"
    Config = EchoConfig
    secrets = ("api_token",)

    @action("say", risk=RiskLevel.READ)
    async def say(self, ctx: ActionContext, params: EchoIn) -> EchoOut:
        assert isinstance(self.config, EchoConfig)
        token = ctx.secrets.get("api_token")
        return EchoOut(
            word=params.word,
            base_url=self.config.base_url,
            region=self.config.region,
            token_set=token is not None,
            token_length=len(token.reveal()) if token is not None else 0,
        )

    @action("shout", risk=RiskLevel.MEDIUM, title="A pretend write")
    async def shout(self, ctx: ActionContext, params: EchoIn) -> EchoOut:
        """As ``say``, but declared a write (held by dry-run and permissions)."""
        return await self.say(ctx, params)
