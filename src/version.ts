/** Version and build kind; the build script rewrites BUILD_KIND in the bundled copy. */
export const VERSION = "0.1.0";
export const BUILD_KIND: string = "source";
