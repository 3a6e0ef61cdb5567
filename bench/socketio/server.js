// The Socket.IO 4 peer: the same job as Tako and the floor, websocket transport only.
// "join" (with an ack) puts the socket in the room and in its user's room; "shout" is emitted
// to the room (the sender too, if joined); "direct" {to, m} sends "msg" m to that user's room.
const { createServer } = require("http");
const { Server } = require("socket.io");

const port = Number(process.env.PORT || 4100);
const httpServer = createServer();
const io = new Server(httpServer, { transports: ["websocket"], serveClient: false });

io.on("connection", (socket) => {
  socket.on("join", (data, ack) => {
    socket.join("room");
    if (data && typeof data.uid === "string") socket.join("u:" + data.uid);
    if (typeof ack === "function") ack("ok");
  });
  socket.on("shout", (data) => io.to("room").emit("shout", data));
  socket.on("direct", (data) => {
    if (data && typeof data.to === "string") io.to("u:" + data.to).emit("msg", data.m);
  });
});

httpServer.listen(port, "127.0.0.1", () => console.error(`socket.io listening on ${port}`));
process.on("SIGTERM", () => process.exit(0));
