"""An echo bot: repeats what is said in #echo and answers private messages.

SEALROOM_PASSWORD=... python examples/echo_bot.py --ca certs/ca.crt echo-bot
"""

import argparse
import os

from sealroom.client import Backoff, Client, Message, PrivateMessage, SealroomError

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("user")
parser.add_argument("--host", default="127.0.0.1")
parser.add_argument("--port", type=int, default=7443)
parser.add_argument("--ca", help="CA certificate (default: the system's trust store)")
args = parser.parse_args()

with Client(args.host, args.port, ca_file=args.ca, reconnect=Backoff()) as client:
    client.login(args.user, os.environ["SEALROOM_PASSWORD"])
    client.join("#echo")
    print(f"{client.user} is listening in #echo", flush=True)
    for event in client.events():  # reconnects (and rejoins #echo) when the server restarts
        try:
            if isinstance(event, Message) and event.sender != client.user:
                client.say(f"{event.sender} said: {event.text}", room=event.room)
            elif isinstance(event, PrivateMessage):
                client.msg(event.sender, f"you said: {event.text}")
        except SealroomError as error:  # rate-limited, or the connection dropped mid-reply
            print(f"could not answer: {error}", flush=True)
