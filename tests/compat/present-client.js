// A HoloQuest client in its own process, for tests that kill it: connects with the user id in
// argv[2] to the server in argv[3], joins `notifications`, prints "joined" and stays.
import { Socket } from "phoenix";
import WebSocket from "ws";

const [userToken, socketUrl] = process.argv.slice(2);
const socket = new Socket(socketUrl, { transport: WebSocket, params: { userToken }, heartbeatIntervalMs: 300 });
socket.connect();
socket
  .channel("notifications", {})
  .join()
  .receive("ok", () => console.log("joined"))
  .receive("error", (e) => {
    console.error("join error", JSON.stringify(e));
    process.exit(1);
  });
