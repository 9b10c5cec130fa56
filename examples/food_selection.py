"""The seed's food-selection dialog (mmpy_bot issue 140) as an llmbot plugin: a scripted,
multi-step conversation whose state lives in the thread, so a restart in the middle loses nothing.

    luca:   @llmbot foodselection tomorrow
    llmbot: Tomorrow there are 3 options: ... Which would you like to have?
    luca:   3
    llmbot: More options is always better! How would you like it to be displayed to others?
    luca:   Gluten-free
    llmbot: Great! Does "Gluten-free (brought by @luca)" look good to you?
    luca:   yes
    llmbot: "Gluten-free (brought by @luca)" is now an option and is available to others.

Load it with LLMBOT_PLUGINS=gpt,examples.food_selection:FoodSelection (from the repository root).
"""

from __future__ import annotations

from llmbot import Message, Plugin, conversational_intent, listen_to

OPTIONS = ("Vegetarian (brought by @mike)", "Vegan (brought by @sandy)", "Bring your own and share")


class FoodSelection(Plugin):
    name = "food"
    conversation_timeout = 300

    @listen_to(r"^food(selection)?\s+(\w+)", conversation=True)
    async def start(self, message: Message, _word: str | None, day: str) -> None:
        listed = "\n".join(f"{i}. {option}" for i, option in enumerate(OPTIONS, 1))
        await message.reply(
            f"{day.capitalize()} there are {len(OPTIONS)} options:\n\n{listed}\n\nWhich would you like to have?",
            state={"step": "choose", "day": day},
        )

    @conversational_intent(r"^(cancel|stop)\W*$")
    async def cancel(self, message: Message) -> None:
        await message.end("Cancelled.")

    async def converse(self, message: Message) -> bool:
        state = message.state or {}
        step, answer = state.get("step"), message.text.strip()
        if step == "choose" and answer.isdigit() and 1 <= int(answer) <= len(OPTIONS):
            if int(answer) < len(OPTIONS):
                await message.end(f"Enjoy: {OPTIONS[int(answer) - 1]}.")
            else:
                await message.reply(
                    "More options is always better! How would you like it to be displayed to others?",
                    state={**state, "step": "name"},
                )
            return True
        if step == "name" and answer:
            option = f"{answer} (brought by @{message.username})"
            await message.reply(f'Great! Does "{option}" look good to you?', state={**state, "step": "confirm", "option": option})
            return True
        if step == "confirm" and answer.lower() in ("yes", "y", "no", "n"):
            if answer.lower().startswith("y"):
                await message.end(f'"{state["option"]}" is now an option and is available to others.')
            else:
                await message.reply("How would you like it to be displayed instead?", state={**state, "step": "name"})
            return True
        return False  # not an answer to this dialog: declined
