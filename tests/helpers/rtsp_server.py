"""A real RTSP server on loopback for the tests: GStreamer's rtsp-server (the OS packages
gir1.2-gst-rtsp-server-1.0, python3-gi, gstreamer1.0-plugins-ugly for x264), run by the
system python3 (`python3 rtsp_server.py PORT VIDEO`): VIDEO decoded and re-encoded as
H.264 at rtsp://127.0.0.1:PORT/clip. Prints `ready` once it listens, or `missing: WHAT`
and exits 2 where a piece is not installed."""

import sys


def main() -> int:
    port, video = sys.argv[1], sys.argv[2]
    try:
        import gi

        gi.require_version("Gst", "1.0")
        gi.require_version("GstRtspServer", "1.0")
        from gi.repository import GLib, Gst, GstRtspServer
    except (ImportError, ValueError) as exc:
        print(f"missing: {exc}", flush=True)
        return 2
    Gst.init(None)
    for element in ("x264enc", "rtph264pay", "decodebin"):
        if Gst.ElementFactory.find(element) is None:
            print(f"missing: the GStreamer element {element}", flush=True)
            return 2
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(port)
    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(f"( filesrc location={video} ! decodebin ! videoconvert ! "
                       "video/x-raw,format=I420 ! x264enc tune=zerolatency "
                       "speed-preset=ultrafast key-int-max=10 ! rtph264pay name=pay0 pt=96 )")
    factory.set_shared(True)
    server.get_mount_points().add_factory("/clip", factory)
    if server.attach(None) == 0:
        print(f"missing: port {port} is taken", flush=True)
        return 2
    print("ready", flush=True)
    GLib.MainLoop().run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
